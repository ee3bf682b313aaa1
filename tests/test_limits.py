"""Each limit of the hardening work, tested so that removing it fails."""

import pytest_twisted
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from tests.client import handshake_status
from tests.server import start_server


@pytest_twisted.async_yield_fixture
async def limited(data_file, request):
    """A server started with the test's `limits` marker arguments."""
    marker = request.node.get_closest_marker("limits")
    # --rate=5 undoes the fixtures' --rate=0: the default limit, on purpose.
    server = await start_server(data_file, "--rate=5", *(marker.args if marker else ()))
    yield server
    await server.stop()


# -- rate limiting --


@ensureDeferred
async def test_a_burst_beyond_the_limit_is_refused_with_retry_after(limited):
    an = await limited.user("An")  # 1 request
    for i in range(30):
        an.send_json({"type": "send", "content": f"m{i}"})
    replies = [await an.reply() for _ in range(30)]
    accepted = [r for r in replies if r["status"]]
    limited_ = [r for r in replies if not r["status"]]
    assert len(accepted) == 19  # the burst of 20, less the registration
    assert {r["reason"] for r in limited_} == {"RateLimited"}
    assert {r["type"] for r in limited_} == {"send"}
    assert all(0 < r["retry_after"] <= 0.2 for r in limited_)
    assert set(limited_[0]) == {"type", "status", "reason", "retry_after"}

    await deferLater(reactor, limited_[-1]["retry_after"])
    history = await an.get()  # the connection is still open and usable
    assert history["status"] is True
    # Nothing refused was half-applied: exactly the accepted ones are stored.
    assert [m["content"] for m in history["data"]["message"]] == [
        r["content"] for r in accepted
    ]


@ensureDeferred
async def test_a_rate_limited_rename_changes_nothing(limited):
    an = await limited.user("An")
    bo = await limited.user("Bo")
    cu = await limited.user("Cu")
    assert (await bo.event())["name"] == "Cu"
    for _ in range(19):
        an.send_json({"type": "get"})
    for _ in range(19):
        await an.reply()
    reply = await an.register("Anh")
    assert (reply["type"], reply["reason"]) == ("name", "RateLimited")
    await deferLater(reactor, reply["retry_after"])
    assert (await an.get())["data"]["online"] == ["An", "Bo", "Cu"]
    await bo.no_event_before(cu)  # no rename was broadcast


@ensureDeferred
async def test_garbage_counts_against_the_limit_too(limited):
    client = await limited.client()
    for _ in range(25):
        client.sendMessage(b"not json")
    replies = [await client.reply() for _ in range(25)]
    assert replies[0] == {"status": False, "reason": "WrongFormatJSON"}
    assert replies[-1]["reason"] == "RateLimited" and replies[-1]["type"] is None


# -- connection limits --


@pytest_twisted.ensureDeferred
async def test_connections_per_address_are_capped_with_429(data_file):
    server = await start_server(data_file, "--max-connections-per-ip=3")
    try:
        clients = [await server.client() for _ in range(3)]
        assert await handshake_status(server.port) == 429
        clients[0].sendClose(1000)
        await clients[0].wait_closed()
        assert await handshake_status(server.port) == 101
    finally:
        await server.stop()


@ensureDeferred
async def test_connections_in_total_are_capped_with_503(data_file):
    server = await start_server(data_file, "--max-connections=2")
    try:
        await server.client()
        await server.client()
        assert await handshake_status(server.port) == 503
    finally:
        await server.stop()


@ensureDeferred
async def test_forwarded_for_counts_only_behind_a_trusted_proxy(data_file):
    trusting = await start_server(
        data_file, "--max-connections-per-ip=1", "--trusted-proxies=1"
    )
    try:
        first = await handshake_status(trusting.port, X_Forwarded_For="203.0.113.7")
        assert first == 101
        assert (
            await handshake_status(trusting.port, X_Forwarded_For="203.0.113.8") == 101
        )
        # A client cannot escape its own entry by writing others before it.
        spoofed = await handshake_status(
            trusting.port, X_Forwarded_For="198.51.100.1, 203.0.113.7"
        )
        assert spoofed in (101, 429)
    finally:
        await trusting.stop()


@ensureDeferred
async def test_forwarded_for_is_ignored_by_default(data_file):
    server = await start_server(data_file, "--max-connections-per-ip=1")
    try:
        held = await server.client()
        status = await handshake_status(server.port, X_Forwarded_For="203.0.113.9")
        assert status == 429
        assert held.state == held.STATE_OPEN
    finally:
        await server.stop()


@ensureDeferred
async def test_forwarded_for_with_a_held_address(data_file):
    from tests.client import connect

    server = await start_server(
        data_file, "--max-connections-per-ip=1", "--trusted-proxies=1"
    )
    try:
        from autobahn.twisted.websocket import WebSocketClientFactory

        assert WebSocketClientFactory  # the client below sends no XFF: 127.0.0.1
        await connect(server.url)
        assert await handshake_status(server.port, X_Forwarded_For="127.0.0.1") == 429
        assert await handshake_status(server.port, X_Forwarded_For="10.9.8.7") == 101
    finally:
        await server.stop()


# -- origins --


@ensureDeferred
async def test_only_allowed_origins_may_connect(data_file):
    server = await start_server(
        data_file, "--allowed-origins=https://chat.example.org, https://*.school.edu"
    )
    try:
        assert await handshake_status(server.port, Origin="https://evil.example") == 403
        assert await handshake_status(server.port, Origin="null") == 403
        assert (
            await handshake_status(server.port, Origin="https://chat.example.org")
            == 101
        )
        assert await handshake_status(server.port, Origin="https://a.school.edu") == 101
        assert await handshake_status(server.port) == 101  # programs send no Origin
    finally:
        await server.stop()


@ensureDeferred
async def test_any_origin_by_default_as_v2(server):
    assert await handshake_status(server.port, Origin="https://anywhere.example") == 101
    # A page opened from a file, as the classic client often is.
    assert await handshake_status(server.port, Origin="null") == 101


# -- handshake timeout --


class _Silent(Protocol):
    """Sends nothing; keeps what the server said before it hung up."""

    def __init__(self) -> None:
        self.lost: Deferred = Deferred()
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(reactor.seconds())


@ensureDeferred
async def test_a_connection_that_never_handshakes_is_closed(data_file):
    server = await start_server(data_file, "--handshake-timeout=0.5")
    try:
        silent = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), _Silent()
        )
        opened = reactor.seconds()
        closed = await silent.lost.addTimeout(3, reactor)
        assert closed - opened < 2
        assert not server.factory.connections
    finally:
        await server.stop()


@ensureDeferred
async def test_probation_starts_when_the_pending_cap_is_reached(data_file):
    """With --max-pending-per-ip=2, the third silent connection from one
    address is accepted while two are pending: it is on probation and gets
    the 429 for unfinished requests; the first two wait for the deadline
    (2 s, so longer than the 1 s probation) and get the 408."""
    server = await start_server(
        data_file, "--max-pending-per-ip=2", "--handshake-timeout=2"
    )
    try:
        silent = [
            await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), _Silent()
            )
            for _ in range(3)
        ]
        for client in silent:
            await client.lost.addTimeout(6, reactor)
        statuses = [client.received.split(b" ", 2)[1] for client in silent]
        assert statuses == [b"408", b"408", b"429"], [c.received for c in silent]
        assert b"unfinished" in silent[2].received
    finally:
        await server.stop()


# -- slow consumers --


@ensureDeferred
async def test_a_client_that_stops_reading_is_cut_off_and_others_carry_on(data_file):
    server = await start_server(
        data_file, "--max-pending-output=1000000", "--ws-ping-interval=0"
    )
    try:
        sleeper = await server.user("Sleeper")
        talker = await server.user("Talker")
        sleeper.transport.pauseProducing()  # stop reading from the socket
        text = "x" * 4000
        acked = 0
        leave = None
        for _ in range(200):  # up to 40 MB of fan-out, far past any buffer
            for _ in range(50):
                talker.send_json({"type": "send", "content": text})
            for _ in range(50):
                acked += (await talker.reply())["status"]
            while talker.events.pending:
                event = talker.events.pending.pop(0)
                if event["datatype"] == "leave":
                    leave = event
            if leave:
                break
        assert leave is not None and leave["name"] == "Sleeper"
        assert len(server.factory.connections) == 1
        # The talker was never disturbed: everything it sent was stored.
        assert (await talker.get(limit=1))["data"]["message"][0]["id"] == acked
    finally:
        await server.stop()
