"""chatbox at the sizes real chats reach, not three messages.

The classic client sends a bare `get` right after registering and renders
the answer; before this was tested at size, that answer stopped arriving
once it outgrew --max-message-size (about 600 messages, or 170 long names
online), because the limit meant for what clients send was applied to what
chatbox sends. Every server here runs with the default --max-message-size.
"""

import json
import time
from pathlib import Path

from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from chatbox.chat.arns import MAX_NAME_LENGTH
from chatbox.chat.content import MAX_CONTENT_LENGTH
from chatbox.local import datafile
from chatbox.wire import codec, messages
from chatbox.wire.clock import millis_of
from tests.client import fired
from tests.server import start_server
from tests.test_classic_client import browser

TIMESTAMP = "25/11/2026, 08:00:00"
# U+1D49C MATHEMATICAL SCRIPT CAPITAL A: four bytes in UTF-8.
WIDE = "\U0001d49c"


def prefill(path: Path, count: int, content: str = "", name: str = "") -> None:
    """A data.json of `count` messages, written as the server would."""
    entries = [
        codec.encode_compact(
            messages.history_entry(
                i,
                name or f"user{i % 300}",
                content or f"message {i}",
                TIMESTAMP,
                millis_of(TIMESTAMP),
            )
        )
        for i in range(1, count + 1)
    ]
    datafile.write_array(str(path), entries, count)


def frame_size(reply: dict) -> int:
    return len(json.dumps(reply, ensure_ascii=False).encode())


@ensureDeferred
async def test_the_classic_client_gets_history_at_10k_and_100k_messages(data_file):
    for count in (10_000, 100_000):
        prefill(data_file, count)
        server = await start_server(data_file)
        try:
            classic = await browser(server.port)
            assert (await classic.register("An"))["status"] is True
            reply = await classic.get()  # bare, as the classic client sends it
            assert reply["status"] is True
            history = reply["data"]["message"]
            assert len(history) == 10_000  # the default --history-cap
            assert [m["id"] for m in history] == list(range(count - 9_999, count + 1))
            assert history[-1]["content"] == f"message {count}"
            assert reply["data"]["online"] == ["An"]
            assert frame_size(reply) > 65_536  # past --max-message-size
            # And the classic session goes on: its send is answered.
            assert (await classic.say("vẫn chạy"))["id"] == count + 1
        finally:
            await server.stop()


@ensureDeferred
async def test_a_thousand_long_names_online_do_not_break_get(data_file):
    """1,000 users with 100-character names in a 4-byte script: the online
    list alone is 400 KB, so even `get` with `limit: 1` once failed."""
    server = await start_server(
        data_file, "--max-connections-per-ip=0", "--ws-ping-interval=0"
    )
    try:
        names = [WIDE * (MAX_NAME_LENGTH - 4) + f"{i:04d}" for i in range(1000)]
        watcher = await server.user("Watcher")
        clients = []
        for start in range(0, 1000, 100):
            batch = await gatherResults(
                [Deferred.fromCoroutine(server.client()) for _ in range(100)],
                consumeErrors=True,
            )
            for client, name in zip(batch, names[start:], strict=False):
                client.send_json({"type": "name", "name": name})
            for client in batch:
                assert (await client.reply())["status"] is True
                # Not reading what follows keeps this test's own client side
                # from parsing half a million join events; the kernel holds them.
                client.transport.pauseProducing()
            clients += batch
        for limit in (1, None):
            query = {} if limit is None else {"limit": limit}
            reply = await watcher.get(**query)
            assert reply["status"] is True
            online = reply["data"]["online"]
            assert online[0] == "Watcher" and sorted(online[1:]) == names
            assert frame_size(reply) > 380_000
        # They all still get events: a sample of them reads its backlog.
        await watcher.say("xin chào")
        for client in clients[::100]:
            client.transport.resumeProducing()
            while (event := await client.event())["datatype"] != "message":
                pass
            assert event["content"] == "xin chào"
    finally:
        await server.stop()


@ensureDeferred
async def test_longest_messages_in_a_4_byte_script_are_paged_by_bytes(data_file):
    """2,000 messages of 4,000 four-byte characters are 32 MB of history; a
    bare get carries the newest that fit in --max-get-bytes, and paging back
    with `before` reaches every one of them."""
    content = WIDE * MAX_CONTENT_LENGTH
    prefill(data_file, 2_000, content=content, name=WIDE * MAX_NAME_LENGTH)
    server = await start_server(data_file, "--max-get-bytes=4000000")
    try:
        an = await server.user("An")
        sent = await an.say(content)  # the longest message fits one frame
        assert sent["status"] is True and sent["id"] == 2_001
        reply = await an.get()
        got = reply["data"]["message"]
        assert got[-1]["id"] == 2_001 and got[-1]["content"] == content
        carried = sum(len(codec.encode(m)) for m in got)
        older = len(codec.encode({**got[0], "id": got[0]["id"] - 1}))
        assert carried <= 4_000_000 < carried + older  # as many as fit
        seen = [m["id"] for m in got]
        while seen[0] > 1:
            page = (await an.get(before=seen[0]))["data"]["message"]
            assert page and frame_size({"m": page}) < 4_100_000
            seen = [m["id"] for m in page] + seen
        assert seen == list(range(1, 2_002))
    finally:
        await server.stop()


@ensureDeferred
async def test_a_get_reply_comes_before_what_happened_after_it(data_file):
    """A large reply is built off the reactor; meanwhile others keep
    chatting. The reader sees the reply first, then only later events, so
    a client that renders the reply and then appends events shows each
    message exactly once."""
    prefill(data_file, 100_000)
    # Whole-history replies (13 MB) take long enough to build that sends
    # are stored and broadcast meanwhile.
    server = await start_server(data_file, "--history-cap=100000", "--max-get-bytes=0")
    try:
        reader = await server.user("Reader")
        talker = await server.user("Talker")
        for _ in range(5):
            reader.send_json({"type": "get"})
            for i in range(20):
                talker.send_json({"type": "send", "content": f"now {i}"})
            await reader.reply()
            for _ in range(20):
                assert (await talker.reply())["status"] is True
        await talker.say("barrier")
        while (await reader.event()).get("content") != "barrier":
            pass
        # On the wire: a message event before a get reply is in that reply's
        # snapshot; one after it is newer than everything the reply holds.
        gets = [
            (i, max(m["id"] for m in frame["data"]["message"]))
            for i, frame in enumerate(reader.raw)
            if frame.get("type") == "get"
        ]
        assert len(gets) == 5
        for j, frame in enumerate(reader.raw):
            if frame.get("datatype") == "message":
                for i, newest in gets:
                    assert (frame["id"] <= newest) if j < i else (frame["id"] > newest)
    finally:
        await server.stop()


@ensureDeferred
async def test_pipelined_bare_gets_wait_for_the_client_to_read(data_file):
    """Ten bare gets at once are 13 MB of replies; a client that reads them
    slowly gets every one and is never cut off as a slow consumer."""
    prefill(data_file, 100_000)
    server = await start_server(data_file, "--max-pending-output=2000000")
    try:
        an = await server.user("An")
        for _ in range(10):
            an.send_json({"type": "get"})
        an.transport.pauseProducing()
        started = time.monotonic()
        while time.monotonic() - started < 1:
            await deferLater(reactor, 0.1, lambda: None)
        an.transport.resumeProducing()
        for _ in range(10):
            reply = await an.reply()
            assert len(reply["data"]["message"]) == 10_000
        assert (await an.say("still here"))["status"] is True
    finally:
        await server.stop()


@ensureDeferred
async def test_clients_that_ask_and_never_read_cannot_hold_the_reply_budget(
    data_file, monkeypatch
):
    """Five connections from one address ask whole-history gets (11 MB
    each, more than the kernel buffers) and never read. Between them they
    may hold a quarter of --max-reply-bytes, so another address's gets go
    on; and they are cut off once they have had their time to read."""
    from chatbox.wire import backpressure

    monkeypatch.setattr(backpressure, "READ_GRACE", 1.5)
    monkeypatch.setattr(backpressure, "READ_RATE", 10**12)
    prefill(data_file, 100_000)
    server = await start_server(
        data_file,
        "--history-cap=100000",
        "--max-get-bytes=0",
        "--max-reply-bytes=48000000",
        "--max-connections-per-ip=0",
        "--ws-ping-interval=0",
    )
    try:
        sleepers = [await server.user(f"Sleeper{i}") for i in range(5)]
        for sleeper in sleepers:
            sleeper.transport.pauseProducing()
            sleeper.send_json({"type": "get"})
        honest = await server.user("Honest", source="127.0.0.2")
        for _ in range(3):
            assert len((await honest.get())["data"]["message"]) == 100_000
        # ...while the sleepers were all still there, holding their shares.
        connections = list(server.factory.connections)
        assert len(connections) == 6
        await closes(connections, 5).addTimeout(60, reactor)
        open_ = [c for c in connections if not c.is_closed.called]
        assert len(open_) == 1  # the honest one
        assert (await honest.say("still here"))["status"] is True
        registry = server.factory.metrics.registry
        cut_off = registry.get_sample_value("chatbox_slow_consumer_disconnects_total")
        assert cut_off == 5
        assert server.factory.reply_gate.used == 0
    finally:
        await server.stop()


def closes(connections, count: int) -> Deferred:
    """Fires once `count` of the server's `connections` have closed (each
    Autobahn protocol's is_closed)."""
    return fired([connection.is_closed for connection in connections], count)


def _read_slowly(port: int, seconds_per_mib: float) -> tuple[int, float]:
    """A phone on a slow link: a small receive buffer, read a little at a
    time. Registers, asks a bare get and returns the reply's size and how
    long it took to arrive."""
    import base64
    import os
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )

    def send(message: dict) -> None:
        payload = json.dumps(message).encode()
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + bytes(4) + payload)

    buffer = b""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(4096)
    buffer = buffer.split(b"\r\n\r\n", 1)[1]
    send({"type": "name", "name": "Slow"})
    send({"type": "get"})
    started = time.monotonic()
    chunk = 16_384
    while True:
        # Frames as they come: pings get their pongs; the get reply ends it.
        while len(buffer) >= 2:
            length, start = buffer[1] & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                length, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + length:
                break
            opcode, payload = buffer[0] & 0x0F, buffer[start : start + length]
            buffer = buffer[start + length :]
            if opcode == 9:
                sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + bytes(4) + payload)
            elif opcode == 8:
                raise ConnectionError(f"closed: {payload[:2].hex()} {payload[2:]}")
            elif payload.startswith(b'{"type":"get"'):
                sock.close()
                return len(payload), time.monotonic() - started
        data = sock.recv(chunk)
        if not data:
            raise ConnectionError("dropped")
        buffer += data
        time.sleep(seconds_per_mib * len(data) / 2**20)


@ensureDeferred
async def test_a_client_that_reads_slowly_gets_its_whole_reply(data_file):
    """An 8 MB bare get read at about 1 MB/s takes longer than the WebSocket
    ping timeout; the ping waits behind the reply, so the client cannot
    answer it in time. It keeps reading, so it keeps its connection."""
    from twisted.internet.threads import deferToThread

    prefill(data_file, 600, content=WIDE * MAX_CONTENT_LENGTH)
    server = await start_server(
        data_file, "--ws-ping-interval=1", "--ws-ping-timeout=1"
    )
    try:
        size, took = await deferToThread(_read_slowly, server.port, 1.0)
        assert size > 7_000_000 and took > 3  # far past interval + timeout
    finally:
        await server.stop()


@ensureDeferred
async def test_a_slow_reader_in_a_busy_room_is_alive_while_it_reads(data_file):
    """The same slow reader while someone else fills the room faster than it
    reads: what waits for it grows after each ping, but it keeps reading,
    so it is alive. How far behind it may fall is --max-pending-output's
    to say, not the ping timeout's."""
    from twisted.internet.threads import deferToThread

    prefill(data_file, 600, content=WIDE * MAX_CONTENT_LENGTH)
    server = await start_server(
        data_file,
        "--ws-ping-interval=1",
        "--ws-ping-timeout=1",
        "--max-pending-output=100000000",
    )
    talker = await server.user("Talker")
    talking = True

    async def talk() -> None:
        while talking:  # some 1.6 MB/s of 16 KB messages, above the reader's
            await talker.say(WIDE * MAX_CONTENT_LENGTH)
            await deferLater(reactor, 0.01, lambda: None)

    chatter = Deferred.fromCoroutine(talk())
    try:
        size, took = await deferToThread(_read_slowly, server.port, 1.0)
        assert size > 7_000_000 and took > 3
    finally:
        talking = False
        await chatter
        await server.stop()
