"""Lose nothing acknowledged: kill -9 mid-stream, restart, and compare.

The server runs as a real child process under twistd, so the kill is real
and so is the recovery from whatever the disk held at that instant.
"""

import json
import signal

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater

from tests.client import connect
from tests.process import spawn, start

SENDERS = 6
IN_FLIGHT = 8


async def chatter(url, index, acked, stop):
    """Send numbered messages with IN_FLIGHT outstanding until told to stop."""
    client = await connect(url)
    assert (await client.register(f"sender{index}"))["status"] is True
    sent = 0

    def send():
        nonlocal sent
        client.send_json({"type": "send", "content": f"{index}:{sent}"})
        sent += 1

    for _ in range(IN_FLIGHT):
        send()
    try:
        while True:
            reply = await client.reply(timeout=30)
            if reply.get("status") is True:
                acked.append((reply["id"], reply["content"]))
            if not stop:
                send()
    except Exception:
        return  # The server was killed under us: exactly the point.


@ensureDeferred
async def test_kill_9_mid_stream_loses_no_acknowledged_message(tmp_path):
    server = await start(tmp_path)
    acked: list[tuple[int, str]] = []
    stop: list[bool] = []
    chatters = DeferredList(
        [
            Deferred.fromCoroutine(chatter(server.url, i, acked, stop))
            for i in range(SENDERS)
        ]
    )
    while len(acked) < 600:
        await deferLater(reactor, 0.01)
    await server.kill(signal.SIGKILL)
    assert server.signal == signal.SIGKILL
    await chatters
    assert len(acked) >= 600

    again = await start(tmp_path, "--history-cap=1000000")
    try:
        reader = await connect(again.url)
        await reader.register("reader")
        stored = {
            (m["id"], m["content"]) for m in (await reader.get())["data"]["message"]
        }
        missing = [m for m in acked if m not in stored]
        assert not missing, (
            f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
        )
        ids = sorted(i for i, _ in stored)
        assert ids == sorted(set(ids))
        # Sending carries on after the recovered history, ids still growing.
        assert (await reader.say("after the crash"))["id"] > max(ids)
    finally:
        await again.kill(signal.SIGTERM)
    assert again.stopped_cleanly, again.output.decode()

    saved = json.loads((tmp_path / "data.json").read_text())
    assert {(m["id"], m["content"]) for m in saved} >= set(acked)
    assert saved[-1]["content"] == "after the crash"
    assert (tmp_path / "data.json.journal").stat().st_size == 0


@ensureDeferred
async def test_sigterm_acknowledges_pending_sends_then_closes_with_1001(tmp_path):
    server = await start(tmp_path)
    client = await connect(server.url)
    await client.register("An")
    for i in range(50):
        client.send_json({"type": "send", "content": f"m{i}"})
    await deferLater(reactor, 0.05)
    ended = server.kill(signal.SIGTERM)
    assert await client.close_code_from_server() == 1001
    acked = [
        r
        for r in [
            client.replies.pending.pop(0) for _ in range(len(client.replies.pending))
        ]
        if r.get("status")
    ]
    await ended
    assert server.stopped_cleanly, server.output.decode()
    saved = [m["content"] for m in json.loads((tmp_path / "data.json").read_text())]
    assert {r["content"] for r in acked} <= set(saved)
    assert saved == [f"m{i}" for i in range(len(saved))]


@ensureDeferred
async def test_corrupt_history_refuses_to_start_and_names_the_file(tmp_path):
    data = tmp_path / "data.json"
    data.write_text('[{"name": "An", "content": "x", "timestamp": "t"}\n{"oops"}]')
    process = spawn(tmp_path)
    with pytest.raises(RuntimeError, match="chatbox exited"):
        await process.started
    assert process.exit_code != 0
    output = process.output.decode()
    assert "chatbox: cannot start:" in output and "data.json: not valid JSON" in output
    assert "line 2" in output
    assert "Traceback" not in output
    assert (
        data.read_text()
        == '[{"name": "An", "content": "x", "timestamp": "t"}\n{"oops"}]'
    )


@ensureDeferred
async def test_history_that_is_not_an_array_refuses_to_start(tmp_path):
    (tmp_path / "data.json").write_text('{"name": "An"}')
    process = spawn(tmp_path)
    with pytest.raises(RuntimeError, match="expected a JSON array of messages"):
        await process.started
    assert process.exit_code != 0


@ensureDeferred
async def test_a_torn_journal_tail_is_tolerated(tmp_path):
    (tmp_path / "data.json").write_text(
        json.dumps(
            [
                {
                    "name": "An",
                    "content": "v2 message",
                    "timestamp": "01/01/2020, 10:00:00",
                }
            ]
        )
    )
    good = json.dumps({"id": 2, "name": "Bo", "content": "journaled", "timestamp": "t"})
    (tmp_path / "data.json.journal").write_text(
        good + "\n" + '{"id": 3, "name": "Bo", "con'
    )
    server = await start(tmp_path)
    try:
        client = await connect(server.url)
        await client.register("Cu")
        history = (await client.get())["data"]["message"]
        assert [(m["id"], m["content"]) for m in history] == [
            (1, "v2 message"),
            (2, "journaled"),
        ]
        assert (await client.say("new"))["id"] == 3
    finally:
        await server.kill(signal.SIGTERM)
    saved = json.loads((tmp_path / "data.json").read_text())
    assert [m["content"] for m in saved] == ["v2 message", "journaled", "new"]
