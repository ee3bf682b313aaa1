"""The chat port's HTTP side against an attacker: slowloris, bodies, odd
paths, connection floods and log injection, over real sockets."""

import os
import re
import select
import socket
import ssl
import sys
from pathlib import Path

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread

from tests import process
from tests.client import ChatClientProtocol, fired, handshake_status
from tests.server import start_server
from tests.test_tls import tls_files as _tls_files

TIMEOUT = 10
tls_files = _tls_files  # a certificate chain for the test (tests/test_tls.py)
OTHER = "127.0.0.2"  # another client address: Linux routes all of 127/8 to lo


class Raw(Protocol):
    """A raw HTTP client: what came back, and when the server hung up."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred = Deferred()
        # Fires once a response head has come back, or the server hung up.
        self.answered: Deferred = Deferred()
        self.opened_at = reactor.seconds()
        self.closed_at: float | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received and not self.answered.called:
            self.answered.callback(self.received)

    def connectionLost(self, reason=None) -> None:
        self.closed_at = reactor.seconds()
        self.closed.callback(self.received)
        if not self.answered.called:
            self.answered.callback(self.received)

    @property
    def status(self) -> int | None:
        match = re.match(rb"HTTP/1\.1 (\d{3}) ", self.received)
        return int(match.group(1)) if match else None


async def raw(port: int, data: bytes = b"", bind: str | None = None) -> Raw:
    endpoint = TCP4ClientEndpoint(
        reactor, "127.0.0.1", port, timeout=5, bindAddress=(bind, 0) if bind else None
    )
    protocol = await connectProtocol(endpoint, Raw())
    if data:
        protocol.transport.write(data)
    return protocol


async def status_of(port: int, request: bytes) -> int | None:
    """The status of the first response to `request`, sent whole."""
    client = await raw(port, request)
    await client.answered.addTimeout(TIMEOUT, reactor)
    client.transport.abortConnection()
    return client.status


def closed(clients: list[Raw], count: int) -> Deferred:
    """Fires once `count` of `clients` have been closed by the server."""
    return fired([client.closed for client in clients], count).addTimeout(
        TIMEOUT, reactor
    )


async def ws_client(port: int, bind: str) -> ChatClientProtocol:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}")
    factory.protocol = ChatClientProtocol
    factory.setProtocolOptions(autoPingInterval=0)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(bind, 0))
    protocol = await endpoint.connect(factory)
    return await protocol.opened.addTimeout(TIMEOUT, reactor)


def healthz(port: int, bind: str) -> int:
    """GET /healthz from `bind`, blocking: the server is a child process."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=3, source_address=(bind, 0)
    ) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = sock.recv(4096)
    return int(head.split(b" ", 2)[1])


async def spawn_limited(workdir: Path, files: int, *args: str) -> process.ServerProcess:
    """twistd chatbox with at most `files` file descriptors (hard limit), as a
    small VPS or a container has."""
    child = process.ServerProcess()
    env = process.child_env()
    reactor.spawnProcess(
        child,
        "/usr/bin/prlimit",
        [
            "prlimit",
            f"--nofile={files}:{files}",
            process.TWISTD,
            "-n",
            "--pidfile=",
            "chatbox",
            "--port=tcp:0:interface=127.0.0.1",
            "--rate=0",
            *args,
        ],
        env=env,
        path=str(workdir),
    )
    await child.started.addTimeout(process.START_TIMEOUT, reactor)
    return child


# -- slowloris --


@pytest.mark.skipif(not os.path.exists("/usr/bin/prlimit"), reason="needs prlimit")
@ensureDeferred
async def test_slowloris_from_one_address_cannot_take_the_server(tmp_path):
    """300 connections from one address trickle a request head a byte a
    second into a server that may hold 256 files (so 128 connections; one
    address may hold 100 of them). It keeps serving everyone else, refuses
    the surplus at once, gives those over the pending cap a second to send
    their head, and closes the tricklers at the deadline however steadily
    they trickle."""
    server = await spawn_limited(
        tmp_path, 256, "--handshake-timeout=4", "--max-connections-per-ip=100"
    )
    try:
        port = server.port
        attackers = [await raw(port, b"G") for _ in range(300)]
        head = b"ET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100

        def trickle(position=[0]) -> None:  # noqa: B006 - one byte per tick
            byte = head[position[0] : position[0] + 1]
            position[0] += 1
            for attacker in attackers:
                if not attacker.closed.called:
                    attacker.transport.write(byte)

        ticker = LoopingCall(trickle)
        ticker.start(1.0, now=False)
        try:
            await closed(attackers, 200)
            refused = [a for a in attackers if a.closed.called]
            assert {a.status for a in refused} == {429}

            # Everyone else is served as if nothing were happening.
            assert await deferLater(reactor, 0, healthz, port, OTHER) == 200
            an = await ws_client(port, OTHER)
            assert (await an.register("An"))["status"] is True
            assert (await an.say("still here"))["status"] is True
            # ... and no more than the surplus were refused meanwhile.
            assert sum(a.closed.called for a in attackers) == 200

            held = [a for a in attackers if a not in refused]
            for attacker in held:
                await attacker.closed.addTimeout(6, reactor)
            on_probation = [a for a in held if a.status == 429]
            assert len(on_probation) == 100 - 64
            assert b"unfinished" in on_probation[0].received
            # Their second, not the 4 s deadline (with room for a busy machine).
            assert max(a.closed_at - a.opened_at for a in on_probation) < 3
            trickled = [a for a in held if a not in on_probation]
            lifetimes = [a.closed_at - a.opened_at for a in trickled]
            assert min(lifetimes) > 3.5 and max(lifetimes) < 5.5  # the deadline: 4 s
            assert {a.status for a in trickled} == {408}
            assert an.state == an.STATE_OPEN
        finally:
            ticker.stop()
        await server.kill(15)  # the summary of refusals is written on the way out
    finally:
        await server.kill()
    # Summaries for the 236 refusals, not 236 lines.
    refusals = re.findall(rb"refused .*", server.output)
    assert len(refusals) <= 2
    counted = [int(n) for n in re.findall(rb"(\d+) too many", b" ".join(refusals))]
    assert sum(counted) == 236


@pytest.mark.skipif(not os.path.exists("/usr/bin/prlimit"), reason="needs prlimit")
@ensureDeferred
async def test_connections_from_many_addresses_never_exhaust_the_open_files(tmp_path):
    """With the per-address limits off (as if from many addresses), 300
    silent connections meet a server that may hold 256 files: the total
    stays below the limit, the surplus gets a cheap 503, and the server never
    hits EMFILE (which would cost log lines for each refused accept)."""
    server = await spawn_limited(
        tmp_path,
        256,
        "--handshake-timeout=4",
        "--max-pending-per-ip=0",
        "--max-connections-per-ip=0",
        "--connection-rate=0",
    )
    try:
        clients = [await raw(server.port) for _ in range(300)]
        await closed(clients, 300 - (256 - 128))
        refused = [c for c in clients if c.closed.called]
        assert {c.status for c in refused} == {503}
        assert await deferLater(reactor, 0, healthz, server.port, OTHER) == 503
        assert sum(c.closed.called for c in clients) == 300 - (256 - 128)
        for client in clients:
            await client.closed.addTimeout(6, reactor)  # the deadline
        assert await deferLater(reactor, 0, healthz, server.port, OTHER) == 200
        await server.kill(15)
    finally:
        await server.kill()
    assert b"EMFILE" not in server.output
    assert b"leaves room for 128 connections" in server.output


@ensureDeferred
async def test_the_deadline_is_absolute_and_restarts_after_each_response(data_file):
    server = await start_server(data_file, "--handshake-timeout=1")
    try:
        # Keep-alive: one request, then idle; closed 1 s after the response.
        client = await raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await deferLater(reactor, 0.6)
        answered = reactor.seconds()
        assert client.status == 200
        client.transport.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await deferLater(reactor, 0.6)  # past 1 s from accept, within 1 s of reply
        assert not client.closed.called
        assert client.received.count(b"HTTP/1.1 200") == 2
        await client.closed.addTimeout(3, reactor)
        assert 0.8 < client.closed_at - answered < 2.5

        # Trickling a byte at a time does not extend the deadline.
        trickler = await raw(server.port, b"G")
        for byte in b"ET / HTTP/1.1\r\nX-Slow: " + b"a" * 20:
            if trickler.closed.called:
                break
            trickler.transport.write(bytes([byte]))
            await deferLater(reactor, 0.1)
        await trickler.closed.addTimeout(3, reactor)
        assert 0.8 < trickler.closed_at - trickler.opened_at < 2.0
        assert trickler.status == 408

        # A WebSocket that completed its handshake is no longer timed.
        an = await server.user("An")
        await deferLater(reactor, 1.5)
        assert (await an.say("hello"))["status"] is True
    finally:
        await server.stop()


@ensureDeferred
async def test_over_tls_the_deadline_covers_the_tls_handshake(
    tls_files,
    data_file,
):
    _, cert, key = tls_files
    server = await start_server(
        data_file,
        f"--tls-cert={cert}",
        f"--tls-key={key}",
        "--handshake-timeout=3",
        "--max-pending-per-ip=2",
        scheme="wss",
    )
    try:
        # Never a ClientHello: two held until the 3 s deadline, the third
        # (accepted while two were pending) on its 1 s probation. Neither the
        # 408 nor the 429 can be said without TLS, so each connection is
        # dropped CLOSE_GRACE (2 s) after it is told to go.
        silent = [await raw(server.port) for _ in range(3)]
        for client in silent:
            await client.closed.addTimeout(8, reactor)
        lifetimes = [c.closed_at - c.opened_at for c in silent]
        assert 2.8 < lifetimes[2] < 4.0, lifetimes  # probation: 1 s + 2 s grace
        assert min(lifetimes[:2]) > 4.8 and max(lifetimes[:2]) < 6.5, lifetimes

        # A body is refused over TLS too, and the refusal arrives whole.
        response = await deferToThread(_tls_post, server.port)
        assert response.startswith(b"HTTP/1.1 413 "), response
    finally:
        await server.stop()


def _tls_post(port: int) -> bytes:
    """POST with a body over TLS, blocking (the server is in the reactor)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    plain = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(plain, server_hostname="localhost") as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n")
        try:
            for _ in range(16):
                sock.sendall(b"x" * 65536)
        except OSError:
            pass
        return _read_head(sock)


def _read_head(sock: socket.socket) -> bytes:
    """What the server answered, up to the end of its head (or of the
    connection); whatever has arrived if the socket fails."""
    response = b""
    try:
        while b"\r\n\r\n" not in response:
            data = sock.recv(4096)
            if not data:
                break
            response += data
    except OSError:
        pass
    return response


@ensureDeferred
async def test_unfinished_connections_count_against_the_total(data_file):
    server = await start_server(data_file, "--max-connections=3")
    try:
        silent = [await raw(server.port) for _ in range(3)]
        assert await handshake_status(server.port) == 503
        assert not any(s.closed.called for s in silent)
        silent[0].transport.loseConnection()
        await silent[0].closed
        await deferLater(reactor, 0.1)
        assert await handshake_status(server.port) == 101
    finally:
        await server.stop()


@ensureDeferred
async def test_behind_a_proxy_per_address_limits_wait_for_the_client_address(
    data_file,
):
    server = await start_server(
        data_file,
        "--trusted-proxies=1",
        "--max-pending-per-ip=2",
        "--max-connections-per-ip=3",
    )
    try:
        # Many unfinished connections from the proxy are not one client's.
        silent = [await raw(server.port) for _ in range(10)]
        held = [
            await raw(server.port, upgrade(X_Forwarded_For="203.0.113.7"))
            for _ in range(3)
        ]
        for h in held:
            await h.answered.addTimeout(TIMEOUT, reactor)
        assert {h.status for h in held} == {101}
        assert not any(s.closed.called for s in silent)
        # Once the head names the client, that client's limits apply.
        assert await handshake_status(server.port, X_Forwarded_For="203.0.113.7") == 429
        assert await handshake_status(server.port, X_Forwarded_For="203.0.113.8") == 101
    finally:
        await server.stop()


def upgrade(**headers: str) -> bytes:
    """A WebSocket opening handshake with extra `headers`."""
    lines = [
        "GET / HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- new connections per address --


@ensureDeferred
async def test_a_class_of_40_behind_one_nat_never_notices_the_defaults(data_file):
    """All 40 load the page at the same instant (the page, then its script
    and style at once, each on its own connection), join the chat, and, as
    after a server restart, all reconnect at once."""
    from twisted.internet.defer import gatherResults

    from chatbox.limits import Limits
    from tests.http import fetch

    defaults = Limits()
    server = await start_server(
        data_file,
        f"--max-pending-per-ip={defaults.max_pending_per_address}",
        f"--connection-rate={defaults.connection_rate}",
        f"--connection-burst={defaults.connection_burst}",
    )

    async def student(number: int) -> ChatClientProtocol:
        assert (await fetch(server, "/"))[0] == 200
        scripts = await gatherResults(
            [
                Deferred.fromCoroutine(fetch(server, "/static/app.js")),
                Deferred.fromCoroutine(fetch(server, "/static/style.css")),
            ]
        )
        assert [code for code, _, _ in scripts] == [200, 200], scripts[0][2][:80]
        return await server.user(f"student{number}")

    try:
        students = await gatherResults(
            [Deferred.fromCoroutine(student(n)) for n in range(40)]
        )
        # The server restarts: every page reconnects its socket at once.
        for client in students:
            client.abort()
        await gatherResults(
            [Deferred.fromCoroutine(server.user(f"again{n}")) for n in range(40)]
        )
    finally:
        await server.stop()


@ensureDeferred
async def test_new_connections_per_address_are_rate_limited(data_file):
    server = await start_server(
        data_file, "--connection-burst=40", "--connection-rate=2"
    )
    try:
        # A class of 40 reconnecting at once passes...
        clients = [await server.client() for _ in range(40)]
        for client in clients:
            client.sendClose(1000)
        # ... the next one at once does not, though nothing is held...
        for client in clients:
            await client.wait_closed()
        assert await handshake_status(server.port) == 429
        # ... nor does anyone else's from that address...
        assert await status_of(server.port, b"GET /healthz HTTP/1.1\r\n\r\n") == 429
        # ... while other addresses carry on, and it may again soon after.
        other = await raw(server.port, upgrade(), bind=OTHER)
        await other.answered.addTimeout(TIMEOUT, reactor)
        assert other.status == 101
        await deferLater(reactor, 0.5)
        assert await handshake_status(server.port) == 101
    finally:
        await server.stop()


# -- request bodies --


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _temp_files(pid: int, workdir: Path) -> list[str]:
    """Temporary files the process holds open (its history aside)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(workdir)):
            continue
        if "deleted" in target or target.startswith(("/tmp", "/var/tmp")):
            found.append(target)
    return found


def _post(port: int, head: bytes, total: int, look: bool) -> tuple[bytes, int]:
    """Send `head`, then up to `total` body bytes as fast as the server takes
    them; returns the answer and the bytes sent. A client that `look`s stops
    sending once an answer comes; one that does not (as many do) only reads
    when sending fails, and still must find the answer there."""
    sent = 0
    chunk = b"x" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        while sent < total:
            if look and select.select([sock], [], [], 0)[0]:
                break
            try:
                sent += sock.send(chunk)
            except OSError:  # refused and closed: the answer is waiting
                break
        sock.settimeout(3)
        response = _read_head(sock)
    return response, sent


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"6400000\r\n",
        b"PUT /static/x HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n"
        b"Expect: 100-continue\r\n\r\n",
    ],
    ids=["content-length", "chunked", "expect-100"],
)
@pytest.mark.parametrize("look", [True, False], ids=["looking", "blind"])
@ensureDeferred
async def test_a_100_mb_upload_is_refused_before_it_is_buffered(tmp_path, head, look):
    server = await process.start(tmp_path)
    try:
        pid = server.transport.pid
        rss_before = _rss_kib(pid)
        response, sent = await deferLater(
            reactor, 0, _post, server.port, head, 100 * 1024 * 1024, look
        )
        assert response.startswith(b"HTTP/1.1 413 "), response[:200]
        assert b"Connection: close" in response
        assert sent < 20 * 1024 * 1024  # refused and closed long before the end
        assert _temp_files(pid, tmp_path) == []
        assert _rss_kib(pid) - rss_before < 10 * 1024
        assert await deferLater(reactor, 0, healthz, server.port, "127.0.0.1") == 200
    finally:
        await server.kill()


# -- odd requests --

ODD = [
    # (request, expected status)
    (b"GET /static/%00 HTTP/1.1", 400),
    (b"GET /%00 HTTP/1.1", 400),
    (b"GET /static/app.js%00.png HTTP/1.1", 400),
    (b"GET /static/%2e%2e/%2e%2e/etc/passwd HTTP/1.1", 400),
    (b"GET /static/%2E%2E/x HTTP/1.1", 400),
    (b"GET /static/../../etc/passwd HTTP/1.1", 400),
    (b"GET /static/./app.js HTTP/1.1", 400),
    (b"GET /static/.. HTTP/1.1", 400),
    (b"GET /static/a%2fb HTTP/1.1", 400),
    (b"GET /static/%1b[31m HTTP/1.1", 400),
    (b"GET /static/\x1b[31m HTTP/1.1", 400),
    (b"GET /static/\x01 HTTP/1.1", 400),
    (b"GET /static/%7f HTTP/1.1", 400),
    (b"GET /static/%c2%9b HTTP/1.1", 400),  # C1 control, as UTF-8
    (b"GET /static/%ff HTTP/1.1", 400),  # not UTF-8
    (b"GET /static/\xff\xfe HTTP/1.1", 400),
    (b"GET /static/\xc3\xa9 HTTP/1.1", 400),  # raw non-ASCII, even UTF-8
    (b"GET /static/%zz HTTP/1.1", 400),
    (b"GET /static/% HTTP/1.1", 400),
    (b"GET /static/%4 HTTP/1.1", 400),
    (b"GET /static\\app.js HTTP/1.1", 400),
    (b"GET /static/..%5capp.js HTTP/1.1", 400),
    (b"GET //static/app.js HTTP/1.1", 400),
    (b"GET /static//app.js HTTP/1.1", 400),
    (b"GET http://example.org/ HTTP/1.1", 400),
    (b"GET * HTTP/1.1", 400),
    (b"GET /" + b"a" * 3000 + b" HTTP/1.1", 414),
    (b"GET /" + b"a" * 10000 + b" HTTP/1.1", 414),
    (b"FOO / HTTP/1.1", 405),
    (b"DELETE /healthz HTTP/1.1", 405),
    (b"OPTIONS * HTTP/1.1", 405),
    (b"G\xffT / HTTP/1.1", 400),
    (b"POST /healthz HTTP/1.1\r\nContent-Length: 0", 405),
    (b"GET /nothing-here HTTP/1.1", 404),
    (b"GET / HTTP/1.1\r\nX-Evil: \x1b[2J", 400),
    (b"GET / HTTP/1.1\r\nUser-Agent: a\x7fb", 400),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)), 400),
    (b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 9000, 431),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 6000, 200),  # big, but allowed
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 18000, 431),
    (b"GET / HTTP/1.1" + b"\r\nX-Big: ".join([b""] + [b"a" * 6000] * 3), 400),
    (
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: \x1b[31mAAAAAAAAAAAAAAAAAA==",
        400,
    ),
]


@ensureDeferred
async def test_every_odd_request_is_a_4xx_never_a_500(server):
    """The autouse fixture fails this test if anything logs a traceback."""
    wrong = {}
    for request, expected in ODD:
        if b"\r\nHost:" not in request:
            request = request.replace(b" HTTP/1.1", b" HTTP/1.1\r\nHost: x", 1)
        got = await status_of(server.port, request + b"\r\n\r\n")
        if got != expected:
            wrong[request[:80]] = (got, expected)
    assert not wrong
    # Plain requests still work, on the same server, after all that.
    assert await status_of(server.port, b"GET /static/app.js HTTP/1.1\r\n\r\n") == 200
    assert await status_of(server.port, b"HEAD /healthz HTTP/1.1\r\n\r\n") == 200


BAD_HANDSHAKES = [
    # (headers of an otherwise good handshake to change, expected status)
    ({"Origin": "https://evil.example"}, 403),
    ({"Sec-WebSocket-Version": "12"}, 426),
    ({"Sec-WebSocket-Version": "thirteen"}, 426),
    ({"Sec-WebSocket-Key": "short=="}, 400),
    ({"Sec-WebSocket-Key": "!!!!!!!!!!!!!!!!!!!!!!=="}, 400),
    ({"Upgrade": "websocketx"}, 400),
    ({"Connection": "keep-alive"}, 400),
    ({"Host": None}, 400),
    ({"Sec-WebSocket-Key": None}, 400),
    ({"Origin": "https://ok.example"}, 101),
]


@ensureDeferred
async def test_bad_handshakes_are_refused_without_a_log_line_each(data_file):
    from twisted.logger import globalLogPublisher

    server = await start_server(data_file, "--allowed-origins=https://ok.example")
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        wrong = {}
        for _ in range(20):
            for change, expected in BAD_HANDSHAKES:
                headers = {
                    "Host": "127.0.0.1",
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Version": "13",
                    **change,
                }
                request = b"GET / HTTP/1.1\r\n" + b"".join(
                    f"{k}: {v}\r\n".encode() for k, v in headers.items() if v
                )
                got = await status_of(server.port, request + b"\r\n")
                if got != expected:
                    wrong[str(change)] = (got, expected)
        assert not wrong
    finally:
        await server.stop()
        globalLogPublisher.removeObserver(events.append)
    # The test's own client factories log their starts and stops, and the 20
    # accepted connections their opening and closing.
    events = [
        e
        for e in events
        if not re.search(r"factory|connection from", e.get("log_format") or "")
    ]
    # 180 refusals: one summary line (at shutdown), not a line or three each.
    refusals = [e for e in events if "refused" in (e.get("log_format") or "")]
    assert len(refusals) == 1 and refusals[0]["count"] == 180
    assert len(events) < 5, [e.get("log_format") for e in events][:20]


# -- logs --


@ensureDeferred
async def test_client_strings_never_reach_the_log_raw(tmp_path):
    server = await process.start(
        tmp_path, "--trusted-proxies=1", "--allowed-origins=https://ok.example"
    )
    esc = b"\x1b[31mX\x1b]0;owned\x07\x9b"
    handshake = (
        b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    )
    key = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    try:
        requests = [
            b"GET /" + esc + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /%1b[31m HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: " + esc + b"\r\n\r\n",
            handshake + key + b"Origin: https://evil" + esc + b"\r\n\r\n",
            handshake + key + b"Origin: https://evil.example\r\n"
            b"X-Forwarded-For: " + esc + b"\r\n\r\n",
            handshake + key + b"X-Forwarded-For: 1.2.3.4\r\n"
            b"Origin: https://evil%1b.example\r\n\r\n",
            handshake + b"Sec-WebSocket-Key: " + esc + b"AAAAAAAAA==\r\n\r\n",
            handshake + key + b"Host: " + esc + b"\r\n\r\n",
            handshake.replace(b"websocket", b"websocket" + esc) + key + b"\r\n",
        ]
        statuses = [await status_of(server.port, request) for request in requests]
        # Refusals are logged as a summary; SIGTERM flushes it.
        await server.kill(15)
    finally:
        await server.kill()
    assert b"\x1b" not in server.output and b"\x9b" not in server.output
    assert b"\x07" not in server.output
    assert b"refused" in server.output
    assert set(statuses) <= {400, 403}
    assert server.exit_code == 0, server.output.decode(errors="replace")


if sys.platform != "linux":  # 127.0.0.2 and /proc are Linux's
    pytestmark = pytest.mark.skip(reason="Linux only")
