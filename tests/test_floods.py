"""What one address gains by flooding, and what it costs everyone else.

Limits per connection are not enough: connect, register, send 20,
disconnect and repeat gave one address thousands of stored messages and
hundreds of join/leave events a second. These servers run with chatbox's
default per-address limits; the honest client connects from another
loopback address (127.0.0.2).
"""

import contextlib
import time

from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from tests.server import start_server

PER_ADDRESS = (
    "--ip-send-rate=20",
    "--ip-send-burst=200",
    "--ip-name-rate=5",
    "--ip-name-burst=200",
)  # the defaults; tests/server.py turns them off


@ensureDeferred
async def test_reconnecting_does_not_reset_the_per_address_limits(data_file):
    server = await start_server(data_file, *PER_ADDRESS)
    try:
        honest = await server.user("Honest", source="127.0.0.2")
        stored = names = 0
        started = time.monotonic()
        for cycle in range(60):
            attacker = await server.client()
            names += (await attacker.register(f"bot{cycle}"))["status"]
            for i in range(20):
                attacker.send_json({"type": "send", "content": f"spam {i}"})
            for _ in range(20):
                stored += (await attacker.reply())["status"]
            attacker.sendClose(1000)
            await attacker.wait_closed()
        elapsed = time.monotonic() - started
        # 1,200 sends and 60 registrations tried; the address got its bursts
        # and its rates, no more, however many connections it used.
        assert stored <= 200 + 20 * elapsed + 20
        assert stored < 1_200
        assert names <= 60 and names <= 200 + 5 * elapsed + 5
        # The honest client at another address never noticed.
        for i in range(30):
            assert (await honest.say(f"hello {i}"))["status"] is True
    finally:
        await server.stop()


@ensureDeferred
async def test_registrations_per_address_are_limited(data_file):
    server = await start_server(data_file, "--ip-name-rate=1", "--ip-name-burst=5")
    try:
        clients = [await server.client() for _ in range(8)]
        replies = [await c.register(f"n{i}") for i, c in enumerate(clients)]
        assert [r["status"] for r in replies] == [True] * 5 + [False] * 3
        assert replies[5]["reason"] == "RateLimited" and replies[5]["retry_after"] > 0
        # Renames count too; another address is not affected.
        assert (await clients[0].register("again"))["reason"] == "RateLimited"
        other = await server.client(source="127.0.0.2")
        assert (await other.register("other"))["status"] is True
    finally:
        await server.stop()


@ensureDeferred
async def test_a_connection_that_keeps_flooding_is_closed_and_logged_once(data_file):
    lines: list[str] = []

    def observe(event: dict) -> None:
        text = event.get("log_format") or ""
        if "refused" in text or "rate limited" in text:
            lines.append(text)

    server = await start_server(data_file, "--rate=5", "--burst=20")
    globalLogPublisher.addObserver(observe)
    try:
        honest = await server.user("Honest", source="127.0.0.2")
        flood = await server.user("Flood")
        for _ in range(2_000):
            flood.send_json({"type": "get", "limit": 1})
        assert await flood.close_code_from_server() == 1008
        # Thousands of refusals, a couple of log lines.
        assert len(lines) <= 4, lines
        assert (await honest.say("still fine"))["status"] is True
        # Being told RateLimited a few times is no reason to be closed.
        polite = await server.user("Polite", source="127.0.0.3")
        for _ in range(40):
            polite.send_json({"type": "get", "limit": 1})
        replies = [await polite.reply() for _ in range(40)]
        refused = [r for r in replies if r["status"] is False]
        assert refused and {r["reason"] for r in refused} == {"RateLimited"}
        # Told when it may send again, it waits that long, and may.
        await deferLater(reactor, refused[-1]["retry_after"], lambda: None)
        assert (await polite.say("ok"))["status"] is True
    finally:
        globalLogPublisher.removeObserver(observe)
        await server.stop()


@ensureDeferred
async def test_a_big_burst_raises_the_flood_threshold_to_twice_the_burst(data_file):
    """ "A connection that keeps sending while being told `RateLimited`
    (more than twice the burst, at least 50 times, within 10 s) is closed
    with 1008." With --burst=40 that is 80 refusals, not 50: all 80 are
    answered, and the 81st closes the connection. (--rate=0.01: no token
    comes back while the test runs.)"""
    server = await start_server(data_file, "--rate=0.01", "--burst=40")
    try:
        flood = await server.user("Flood")  # 1 of the burst's 40
        for _ in range(39 + 80):
            flood.send_json({"type": "get", "limit": 1})
        replies = [await flood.reply() for _ in range(39 + 80)]
        refused = [r for r in replies if r["status"] is False]
        assert len(refused) == 80
        assert {r["reason"] for r in refused} == {"RateLimited"}
        flood.send_json({"type": "get", "limit": 1})  # the 81st refusal
        assert await flood.close_code_from_server() == 1008
    finally:
        await server.stop()


@ensureDeferred
async def test_client_strings_reach_the_log_escaped(data_file):
    seen: list[str] = []

    def observe(event: dict) -> None:
        from twisted.logger import formatEvent

        seen.append(formatEvent(event))

    server = await start_server(data_file, "--rate=1", "--burst=1")
    globalLogPublisher.addObserver(observe)
    try:
        evil = await server.client()
        await evil.register("\x1b[31mred\x1b[0m")  # refused: control characters
        await evil.register("x\u202eevil")  # refused: a format character
        await evil.register("ok")
        evil.send_json({"type": "\x1b[2J", "name": "\x1b]0;title\x07"})
        evil.sendClose(1000)
        await evil.wait_closed()
    finally:
        globalLogPublisher.removeObserver(observe)
        await server.stop()
    text = "\n".join(seen)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text


def _frames_then_close_code(port: int, frames: bytes) -> int | None:
    """Register over a raw socket, send `frames` as they are, and return the
    code of the server's close frame."""
    from tests.rawclient import RawClient

    raw = RawClient(port)
    reply = raw.request({"type": "name", "name": f"Fragments{len(frames)}"})
    assert reply["status"] is True, reply
    # Closed on us mid-flood? The close frame is there to read all the same.
    with contextlib.suppress(OSError):
        raw.sock.sendall(frames)
    return raw.close_code()


def _frame(opcode: int, fin: bool, payload: bytes = b"") -> bytes:
    # The all-zero mask key leaves the payload as it is.
    head = bytes([opcode | (0x80 if fin else 0), 0x80 | len(payload)])
    return head + bytes(4) + payload


@ensureDeferred
async def test_empty_fragments_and_pings_count_against_the_limit(data_file):
    """Empty continuation frames of a message that never ends, or pings, cost
    the server a frame's parsing each and are no request: they must not
    escape the limit. (2,000,000 of them once cost 16 s of server CPU.)"""
    from twisted.internet.threads import deferToThread

    server = await start_server(data_file, "--rate=5", "--burst=20")
    try:
        honest = await server.user("Honest", source="127.0.0.2")
        fragments = _frame(1, False, b"{") + _frame(0, False) * 20_000
        pings = _frame(9, True) * 20_000
        for flood in (fragments, pings):
            code = await deferToThread(_frames_then_close_code, server.port, flood)
            assert code == 1008
        assert (await honest.say("still here"))["status"] is True
    finally:
        await server.stop()


@ensureDeferred
async def test_reconnecting_cannot_grow_the_log_without_bound(data_file):
    """Seen by a reviewer: connect, register, send, leave, repeated at the
    per-address limits, wrote 2,231 log lines in 10 s. An address's routine
    lines are budgeted; what is left out is counted in one line."""
    lines: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace", "").startswith("chatbox"):
            lines.append(event.get("log_format") or "")

    server = await start_server(data_file, *PER_ADDRESS)
    globalLogPublisher.addObserver(observe)
    try:
        for cycle in range(150):
            client = await server.client()
            await client.register(f"cycle{cycle}")
            await client.say("hi")
            client.sendClose(1000)
            await client.wait_closed()
        server.factory.log_budget.flush()
    finally:
        globalLogPublisher.removeObserver(observe)
        await server.stop()
    routine = [line for line in lines if "left out" not in line]
    assert len(routine) <= 200 + 10  # the budget, and the server's own lines
    assert any("left out" in line for line in lines)
