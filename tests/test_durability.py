"""Lose nothing acknowledged: kill -9 mid-stream, restart, and compare.

The server runs as a real child process under twistd, so the kill is real
and so is the recovery from whatever the disk held at that instant.
"""

import json
import os
import signal
import time

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.client import connect
from tests.process import spawn, start
from tests.rawclient import RawClient

SENDERS = 6
IN_FLIGHT = 8


async def chatter(client, index, acked, stop):
    """Send numbered messages with IN_FLIGHT outstanding until told to stop."""
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
    clients = [await connect(server.url) for _ in range(SENDERS)]
    for i, client in enumerate(clients):
        assert (await client.register(f"sender{i}"))["status"] is True
    chatters = DeferredList(
        [
            Deferred.fromCoroutine(chatter(client, i, acked, stop))
            for i, client in enumerate(clients)
        ],
        consumeErrors=True,
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
    port = int(server.url.rsplit(":", 1)[1])

    def session() -> tuple[list[dict], int | None]:
        client = RawClient(port)
        assert client.request({"type": "name", "name": "An"})["status"] is True
        for i in range(50):
            client.send(json.dumps({"type": "send", "content": f"m{i}"}).encode())
        time.sleep(0.05)
        os.kill(server.transport.pid, signal.SIGTERM)
        replies = []
        while True:
            opcode, payload = client.frame()
            if opcode == 8:
                return replies, int.from_bytes(payload[:2], "big")
            replies.append(json.loads(payload))

    replies, code = await deferToThread(session)
    assert code == 1001
    await server.ended.addTimeout(10, reactor)
    assert server.stopped_cleanly, server.output.decode()
    acked = [r["content"] for r in replies if r.get("status") is True]
    refused = [r for r in replies if r.get("status") is False]
    assert all(r["error"] == "server shutting down" for r in refused)
    saved = [m["content"] for m in json.loads((tmp_path / "data.json").read_text())]
    # Everything acknowledged is saved, in order, and nothing else is.
    assert saved == acked == [f"m{i}" for i in range(len(acked))]


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
