"""Lose nothing acknowledged: kill -9 mid-stream, restart, and compare.

The server runs as a real child process under twistd, so the kill is real
and so is the recovery from whatever the disk held at that instant.
"""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import pytest_twisted
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThread

from chatbox.local import datafile
from tests.client import connect
from tests.held_twistd import HOLDING
from tests.process import ServerProcess, spawn, start
from tests.rawclient import RawClient

SENDERS = 6
IN_FLIGHT = 8


class Acked(list):
    """(id, content) of every acknowledged send; `reached(n)` fires once it
    holds n."""

    def __init__(self) -> None:
        super().__init__()
        self._waiting: list[tuple[int, Deferred]] = []

    def append(self, item: tuple[int, str]) -> None:
        super().append(item)
        for waiting in list(self._waiting):
            if len(self) >= waiting[0]:
                self._waiting.remove(waiting)
                waiting[1].callback(None)

    def reached(self, count: int) -> Deferred:
        done: Deferred = Deferred()
        self._waiting.append((count, done))
        return done


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


async def chat_then_kill_9(tmp_path) -> tuple[ServerProcess, list[tuple[int, str]]]:
    """A real server with SENDERS chatting, 8 in flight each, killed with
    SIGKILL once 600 messages are acknowledged; returns what was."""
    server = await start(tmp_path)
    acked = Acked()
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
    await acked.reached(600).addTimeout(60, reactor)
    await server.kill(signal.SIGKILL)
    await chatters
    return server, acked


@ensureDeferred
async def test_kill_9_mid_stream_loses_no_acknowledged_message(tmp_path):
    server, acked = await chat_then_kill_9(tmp_path)
    assert server.signal == signal.SIGKILL
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


@pytest.mark.parametrize("when", ["at once", "behind a held write"])
@ensureDeferred
async def test_sigterm_answers_pending_sends_then_closes_with_1001(tmp_path, when):
    """Every journal write is held until shutdown's READ_BEFORE_CLOSE wait
    is over, so no send can be acknowledged before the signal, nor within
    that wait: each reply proves shutdown answered a send that was pending
    when it began, and the acknowledgements before the close frame prove
    it flushed before closing clients. "at once": the signal follows the
    sends, which may still be unread in the socket; "behind a held write":
    the first batch is being written, the rest wait behind it."""
    server = await start(tmp_path, held=True)
    try:
        client = await deferToThread(RawClient, server.port)
        reply = await deferToThread(client.request, {"type": "name", "name": "An"})
        assert reply["status"] is True
        for i in range(50):
            client.send(json.dumps({"type": "send", "content": f"m{i}"}).encode())
        if when == "behind a held write":
            await server.wait_for(HOLDING)
        os.kill(server.transport.pid, signal.SIGTERM)
        # Logged once the read-before-close wait is over, before the flush:
        # from here, only the flush can acknowledge a send before the 1001.
        await server.wait_for(b"shutting down: saving pending messages")
        server.release_writes()

        def replies_until_close() -> tuple[list[dict], int]:
            replies = []
            while True:
                opcode, payload = client.frame()
                if opcode == 8:
                    return replies, int.from_bytes(payload[:2], "big")
                replies.append(json.loads(payload))

        replies, code = await deferToThread(replies_until_close)
        assert code == 1001
        await server.ended.addTimeout(10, reactor)
    finally:
        await server.kill()  # a failure above must not leave it held forever
    assert server.stopped_cleanly, server.output.decode()
    acked = [r["content"] for r in replies if r.get("status") is True]
    refused = [r for r in replies if r.get("status") is False]
    assert all(r["error"] == "server shutting down" for r in refused)
    assert len(acked) + len(refused) == 50  # every send answered
    if when == "behind a held write":
        assert acked, "the write held across the signal was not acknowledged"
    data = tmp_path / "data.json"  # not written when every send was refused
    saved = [m["content"] for m in json.loads(data.read_text())] if acked else []
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


# -- a damaged journal at real size --


async def send_many(client, count: int, prefix: str) -> list[tuple[int, str]]:
    """Pipeline `count` sends, 500 outstanding; returns (id, content) acked."""
    acked = []
    for first in range(0, count, 500):
        batch = range(first, min(first + 500, count))
        for i in batch:
            client.send_json({"type": "send", "content": f"{prefix} {i} " + "ü" * 40})
        for _ in batch:
            reply = await client.reply(timeout=60)
            assert reply["status"] is True, reply
            acked.append((reply["id"], reply["content"]))
    return acked


def files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.iterdir()
        if p.name.startswith("data.json")
    }


async def refusal(folder: Path) -> str:
    """Start-up must stop with one line and leave every history file as it was."""
    before = files(folder)
    process = spawn(folder)
    with pytest.raises(RuntimeError, match="chatbox exited"):
        await process.started.addTimeout(120, reactor)
    assert process.exit_code != 0
    lines = [line for line in process.output.decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert files(folder) == before
    assert "Recovering a damaged history" in lines[0]
    return lines[0]


@pytest_twisted.async_yield_fixture(scope="module")
async def crashed_history(tmp_path_factory):
    """data.json with 2,000 messages and a journal of 10,000 more, as a
    kill -9 left them: made once by a real server, copied for each damage."""
    folder = tmp_path_factory.mktemp("crashed")
    server = await start(folder)
    client = await connect(server.url)
    await client.register("An")
    await send_many(client, 2000, "folded")
    await server.kill(signal.SIGTERM)
    server = await start(folder)
    client = await connect(server.url)
    await client.register("An")
    await send_many(client, 10_000, "journaled")
    await server.kill(signal.SIGKILL)
    yield folder


def copy_of(crashed: Path, tmp_path: Path) -> tuple[Path, bytes]:
    folder = tmp_path / "copy"
    shutil.copytree(crashed, folder)
    journal = (folder / "data.json.journal").read_bytes()
    assert journal.count(b"\n") == 10_000
    return folder, journal


@ensureDeferred
async def test_a_flipped_byte_in_the_last_record_stops_start_up(
    crashed_history, tmp_path
):
    folder, journal = copy_of(crashed_history, tmp_path)
    offset = journal.rstrip(b"\n").rfind(b"\n") + 1
    flip = offset + len(journal[offset:]) // 2
    damaged = bytearray(journal)
    damaged[flip] ^= 0x01
    (folder / "data.json.journal").write_bytes(bytes(damaged))
    said = await refusal(folder)
    assert said.startswith(
        f"chatbox: cannot start: data.json.journal: line 10000 (byte offset {offset})"
    )
    assert "fails its checksum" in said


@ensureDeferred
async def test_a_zeroed_second_half_stops_start_up(crashed_history, tmp_path):
    folder, journal = copy_of(crashed_history, tmp_path)
    half = len(journal) // 2
    (folder / "data.json.journal").write_bytes(
        journal[:half] + b"\0" * (len(journal) - half)
    )
    offset = journal.rfind(b"\n", 0, half) + 1
    number = journal.count(b"\n", 0, offset) + 1
    said = await refusal(folder)
    assert f"data.json.journal: line {number} " in said
    assert f"(byte offset {offset})" in said


@ensureDeferred
async def test_an_emptied_data_json_under_its_journal_stops_start_up(
    crashed_history, tmp_path
):
    folder, _ = copy_of(crashed_history, tmp_path)
    (folder / "data.json").write_bytes(b"")
    said = await refusal(folder)
    assert said.startswith(
        "chatbox: cannot start: data.json.journal: line 1 (byte offset 0): "
        "holds message id 2001, but data.json ends at id 0"
    )


@ensureDeferred
async def test_a_torn_tail_after_kill_9_under_load_is_kept_and_dropped(tmp_path):
    _, acked = await chat_then_kill_9(tmp_path)
    # kill -9 cannot tear a write() (the page cache has it whole); a power
    # cut can. Leave what one would: the start of the next batch.
    journal = tmp_path / "data.json.journal"
    size = journal.stat().st_size
    last = json.loads(journal.read_bytes().splitlines()[-1][9:])
    torn = datafile.record(
        json.dumps({**last, "id": last["id"] + 1}, separators=(",", ":")).encode()
    )[:37]
    with open(journal, "ab") as f:
        f.write(torn)

    again = await start(tmp_path, "--history-cap=1000000")
    try:
        reader = await connect(again.url)
        await reader.register("reader")
        stored = {
            (m["id"], m["content"]) for m in (await reader.get())["data"]["message"]
        }
        assert set(acked) <= stored
        assert (await reader.say("after"))["id"] == last["id"] + 1
    finally:
        await again.kill(signal.SIGTERM)
    assert again.stopped_cleanly, again.output.decode()
    [kept] = tmp_path.glob("data.json.torn-*")
    assert kept.read_bytes() == torn
    assert (
        f"dropped an incomplete last record of 37 bytes at byte offset {size} of "
        "data.json.journal: a write a crash interrupted (not acknowledged), or "
        f"damage no check can tell from one; its bytes are kept in {kept.name}"
    ).encode() in again.output
