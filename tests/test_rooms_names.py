"""Which paths are rooms and which rooms exist, over the wire: the
handshake's status and the page's answer for every way of spelling a path,
the --rooms policies and their limits, option mistakes under the real
twistd, and what GET /rooms, /healthz and /metrics say about rooms."""

import json
import re
import time

import pytest
import pytest_twisted
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from chatbox.limits import AddressBuckets
from tests.client import connect, handshake_status, raw_get, until, user_at
from tests.http import fetch, metric
from tests.process import spawn
from tests.server import start_server


@pytest_twisted.async_yield_fixture
async def open_rooms(data_file):
    running = await start_server(data_file, "--rooms=open")
    yield running
    await running.stop()


ROOM = "class-7a"
# path -> (WebSocket handshake status, page status, page Location)
PATHS = {
    "/": (101, 200, None),
    "/?room=class-7a": (101, 200, None),  # a query never names a room
    "/class-7a": (101, 200, None),
    "/class-7a?lang=vi": (101, 200, None),
    "/Class-7A": (101, 301, "/class-7a"),
    "/CLASS-7A/?lang=vi&x=1": (101, 301, "/class-7a?lang=vi&x=1"),
    "/%63lass-7a": (101, 301, "/class-7a"),
    "/%43LASS%2D7A": (101, 301, "/class-7a"),
    "/class-7a/": (101, 301, "/class-7a"),
    "/" + "z" * 40: (101, 200, None),
    "/9b_x": (101, 200, None),
    # Not rooms: refused as such (404, the reason in text/plain).
    "/" + "z" * 41: (404, 404, None),
    "/class-7a/x": (404, 404, None),
    "/a/b/": (404, 404, None),
    "/l%E1%BB%9Bp-7a": (404, 404, None),  # Unicode: refused, never folded
    "/%E2%84%AA": (404, 404, None),  # the Kelvin sign, not k
    "/%2561": (404, 404, None),  # decoded once: "%61" is no name
    "/a.b": (404, 404, None),
    "/.well-known": (404, 404, None),
    "/a%20b": (404, 404, None),
    "/-a": (404, 404, None),
    "/_a": (404, 404, None),
    "/index.html": (404, 404, None),
    # Reserved: never rooms, whatever the page at the path is.
    "/admin": (404, 404, None),
    "/api": (404, 404, None),
    "/ws": (404, 404, None),
    "/login": (404, 404, None),
    "/Healthz": (404, 404, None),
    "/healthz": (404, 200, None),  # the page is the health report
    "/%68ealthz": (404, 200, None),
    "/rooms": (404, 200, None),  # the room list
    "/metrics": (404, 200, None),
    "/static/": (404, 200, None),
    # Too odd for HTTP itself: refused before any room is looked for.
    "//": (400, 400, None),
    "/..": (400, 400, None),
    "/%2Fa": (400, 400, None),
    "/%C3": (400, 400, None),
    "/lớp-7a": (400, 400, None),  # raw UTF-8 in the request line
    "/a b": (400, 400, None),
    "/class-7a%00": (400, 400, None),
}


@ensureDeferred
async def test_every_spelling_of_a_path_gets_its_status(open_rooms):
    # One address asking for some 40 paths, most of them no room: past the
    # guessing budget they would all be 429 (see the next test), so not here.
    open_rooms.factory.room_guesses = AddressBuckets(0, 1)
    port = open_rooms.port
    page = (await raw_get(port, "/"))[2]
    wrong = []
    for path, (ws_wanted, page_wanted, location) in PATHS.items():
        ws_status, ws_headers, ws_body = await raw_get(port, path, websocket=True)
        status, headers, body = await raw_get(port, path)
        if (ws_status, status, headers.get("location")) != (
            ws_wanted,
            page_wanted,
            location,
        ):
            wrong.append((path, ws_status, status, headers.get("location")))
            continue
        if ws_status == 404:
            assert ws_headers["content-type"].startswith("text/plain"), path
            assert ws_body.strip(), f"{path}: a refusal without its reason"
        if page_wanted == 200 and ws_wanted == 101:
            assert body == page, f"{path}: not the bundled page"
    assert not wrong, "\n".join(map(str, wrong))
    # Every spelling that was let in reached one room, and nothing made
    # a room of the others.
    loaded = sorted(name for name, _ in open_rooms.factory.rooms.loaded())
    assert loaded == ["", "9b_x", "class-7a", "z" * 40]


@ensureDeferred
async def test_every_spelling_of_a_room_is_one_room(open_rooms):
    spellings = ["/class-7a", "/Class-7A", "/%63lass-7a", "/class-7a/", "/CLASS-7A?x"]
    clients = [await connect(open_rooms.url + path) for path in spellings]
    for i, client in enumerate(clients):
        assert (await client.register(f"u{i}"))["status"] is True
    reply = await clients[0].request({"type": "online"})
    assert reply["count"] == len(spellings)


# -- the policies --


@ensureDeferred
async def test_by_default_there_is_no_room_but_the_default_one(server):
    """Without --rooms every WebSocket path is the one chat, as in v2 (a
    client pointed at ws://HOST:PORT/chat keeps working); the page is at /
    only."""
    an = await server.user("An")
    for path in ("/class-7a", "/ws", "/a/b", "/healthz", "/" + "z" * 41):
        assert await handshake_status(server.port, path) == 101, path
        if path != "/healthz":
            assert (await raw_get(server.port, path))[0] == 404, path
        bo = await user_at(server.url + path, "Bo")
        assert (await an.event())["name"] == "Bo"
        bo.sendClose()
        await bo.wait_closed()
        assert (await an.event())["datatype"] == "leave"
    assert await handshake_status(server.port, "/") == 101
    assert (await raw_get(server.port, "/?x"))[0] == 200
    code, _, body = await fetch(server, "/rooms")
    assert (code, json.loads(body)) == (200, {"rooms": []})
    assert not (server.data.parent / "data.rooms").exists()


async def only_these(running, rooms: list[str], others: list[str]) -> None:
    for room in rooms:
        assert await handshake_status(running.port, "/" + room) == 101, room
        assert (await raw_get(running.port, "/" + room))[0] == 200, room
        upper = "/" + room.upper()
        assert await handshake_status(running.port, upper) == 101, room
        assert (await raw_get(running.port, upper))[:2][0] == 301
    for room in others:
        assert await handshake_status(running.port, "/" + room) == 404, room
        for path in ("/" + room, "/" + room.upper()):
            assert (await raw_get(running.port, path))[0] == 404, path


@pytest.mark.parametrize("how", ["comma list", "file"])
@ensureDeferred
async def test_a_fixed_list_lets_in_exactly_its_rooms(data_file, how):
    if how == "file":
        listing = data_file.parent / "rooms.txt"
        listing.write_text(
            "# one room per class\nclass-7a\n  Class-7B   # Mr Minh\n\nteam_1\n"
        )
        value = str(listing)
    else:
        value = " class-7a, Class-7B ,team_1,"
    running = await start_server(data_file, "--rooms=" + value)
    try:
        await only_these(
            running,
            ["class-7a", "class-7b", "team_1"],
            ["class-7c", "team-1", "class", "open"],
        )
    finally:
        await running.stop()


@ensureDeferred
async def test_open_rooms_stop_at_max_rooms_until_an_empty_one_is_forgotten(
    data_file,
):
    """--max-rooms counts rooms with history (stored ones too) and rooms in
    use; a stored room opens whatever the count; an empty room forgotten
    once unloaded frees its place."""
    rooms_dir = data_file.parent / "data.rooms"
    rooms_dir.mkdir()
    (rooms_dir / "old.json").write_text(
        json.dumps([{"name": "An", "content": "from before", "timestamp": "t"}])
    )
    running = await start_server(
        data_file, "--rooms=open", "--max-rooms=3", "--room-idle=0.05"
    )
    rooms = running.factory.rooms
    try:
        keeper = await user_at(running.url + "/kept", "An")
        await keeper.say("kept forever")
        passer = await connect(running.url + "/passing")
        assert await handshake_status(running.port, "/third") == 404
        status, _, body = await raw_get(running.port, "/third", websocket=True)
        assert status == 404 and b"room limit" in body
        assert (await raw_get(running.port, "/third"))[0] == 404
        # The stored room is counted, and still opens.
        old = await user_at(running.url + "/Old", "Bo")
        assert [m["content"] for m in (await old.get())["data"]["message"]] == [
            "from before"
        ]
        for client in (keeper, passer, old):
            client.sendClose(1000)
            await client.wait_closed()
        await until(lambda: rooms.unloads == 3)
        assert not list(rooms_dir.glob("passing*")), "an empty room left files"
        # "passing" is forgotten: one place is free, and only one.
        third = await user_at(running.url + "/third", "Cu")
        assert await handshake_status(running.port, "/fourth") == 404
        assert await handshake_status(running.port, "/kept") == 101
        await third.say("now third is kept too")
    finally:
        await running.stop()
    assert sorted(p.name for p in rooms_dir.glob("*.json")) == [
        "kept.json",
        "old.json",
        "third.json",
    ]


BAD_OPTIONS = [
    (["--rooms=class-7a,Lớp-7b"], "--rooms: 'Lớp-7b': a room name is 1 to 40"),
    (["--rooms=a,healthz"], "'healthz' is reserved by the server"),
    (["--rooms=" + "x" * 41], "a room name is 1 to 40"),
    (["--rooms=./missing.txt"], "cannot read ./missing.txt"),
    (
        ["--rooms=a", "--listed-rooms=b"],
        "--listed-rooms names rooms --rooms does not: b",
    ),
    (["--rooms=open", "--max-rooms=0"], "--max-rooms"),
    (["--rooms=open", "--max-rooms=many"], "--max-rooms"),
    (["--room-idle=-1"], "--room-idle"),
    (["--room-idle=soon"], "--room-idle"),
    (["--listed-rooms=a,a.txt"], "cannot read a,a.txt"),
]


@ensureDeferred
async def test_a_bad_room_option_is_a_usage_error_from_twistd(tmp_path):
    """Each mistake under the real twistd: it exits non-zero before
    listening, with a line about that option and no traceback. All at once:
    one start-up's time for all of them."""
    (tmp_path / "bad-list.txt").write_text("class-7a\nnot a name\n")
    cases = [*BAD_OPTIONS, (["--rooms=bad-list.txt"], "'not a name' in bad-list.txt")]
    processes = [spawn(tmp_path, *args) for args, _ in cases]
    for process in processes:
        process.started.addErrback(lambda _: None)  # exiting is the point
    await gatherResults([p.ended for p in processes]).addTimeout(60, reactor)
    for (args, says), process in zip(cases, processes, strict=True):
        output = process.output.decode()
        assert process.exit_code not in (0, None), (args, output)
        assert says in output, (args, output)
        assert "Traceback" not in output, (args, output)
        assert process.url is None
    assert not (tmp_path / "data.rooms").exists()


# -- what the server says about its rooms --


@ensureDeferred
async def test_the_room_list_shows_listed_rooms_with_their_online_and_activity(
    data_file,
):
    args = ("--rooms=a,b,c", "--listed-rooms=c,a", "--room-idle=0.05")
    running = await start_server(data_file, *args)

    async def listing(server) -> list[dict]:
        code, headers, body = await fetch(server, "/rooms")
        assert (code, headers["content-type"]) == (200, "application/json")
        assert b'"b"' not in body, "an unlisted room was named"
        return json.loads(body)["rooms"]

    empty = [
        {"name": "a", "online": 0, "last_activity": None},
        {"name": "c", "online": 0, "last_activity": None},
    ]
    try:
        assert await listing(running) == empty
        in_a = [await user_at(running.url + "/a", n) for n in ("An", "Bo")]
        lurker = await connect(running.url + "/a")  # not registered: not online
        in_b = await user_at(running.url + "/b", "Secret")
        await in_b.say("in the unlisted room")
        assert await listing(running) == [{**empty[0], "online": 2}, empty[1]]
        said = [await in_a[n % 2].say(f"m{n}") for n in range(3)]
        newest = said[-1]["time"]
        await in_a[0].register("Anh")
        assert await listing(running) == [
            {"name": "a", "online": 2, "last_activity": newest},
            empty[1],
        ]
        in_a[1].sendClose(1000)
        await in_a[1].wait_closed()
        assert (await listing(running))[0]["online"] == 1
        for client in (in_a[0], lurker, in_b):
            client.sendClose(1000)
        await until(lambda: running.factory.rooms.unloads == 2)
        unloaded = [{"name": "a", "online": 0, "last_activity": newest}, empty[1]]
        assert await listing(running) == unloaded
    finally:
        await running.stop()
    again = await start_server(data_file, *args)
    try:
        # After a restart the folder is all there is: a room's last activity
        # is its files' last change (a fold at the earliest), not its newest
        # message's time as in a running server (reported to the lead).
        after = await listing(again)
        assert after[1] == empty[1]
        assert after[0]["online"] == 0
        assert newest <= after[0]["last_activity"] <= time.time() * 1000
    finally:
        await again.stop()


@ensureDeferred
async def test_open_rooms_stay_unlisted_unless_listed(data_file):
    running = await start_server(data_file, "--rooms=open", "--listed-rooms=lobby-2")
    try:
        for name in ("invite-only", "secret-club"):
            client = await user_at(f"{running.url}/{name}", "An")
            await client.say("psst")
        _, _, body = await fetch(running, "/rooms")
        assert json.loads(body) == {
            "rooms": [{"name": "lobby-2", "online": 0, "last_activity": None}]
        }
        _, _, text = await fetch(running, "/metrics")
        _, _, health = await fetch(running, "/healthz")
        for said in (body, text, health):
            assert b"invite" not in said and b"secret" not in said
    finally:
        await running.stop()


@ensureDeferred
async def test_healthz_and_metrics_count_open_and_loaded_rooms(data_file):
    running = await start_server(data_file, "--rooms=a,b", "--room-idle=0.05")
    rooms = running.factory.rooms

    async def health() -> dict:
        code, _, body = await fetch(running, "/healthz")
        assert code == 200
        return json.loads(body)["rooms"]

    async def series() -> tuple[float, ...]:
        _, _, body = await fetch(running, "/metrics")
        text = body.decode()
        for line in text.splitlines():
            if line.startswith("chatbox_room"):
                assert "{" not in line, f"a labelled room series: {line}"
        return tuple(
            metric(text, name)
            for name in (
                "chatbox_rooms_open",
                "chatbox_rooms_loaded",
                "chatbox_room_loads_total",
                "chatbox_room_unloads_total",
            )
        )

    try:
        _, _, body = await fetch(running, "/metrics")
        for name in ("rooms_open", "rooms_loaded", "room_loads", "room_unloads"):
            assert re.search(rf"^# TYPE chatbox_{name}", body.decode(), re.M), name
        assert await health() == {"open": 0, "loaded": 1, "failing": 0}
        assert await series() == (0, 1, 0, 0)
        in_a = await connect(running.url + "/a")
        assert await health() == {"open": 1, "loaded": 2, "failing": 0}
        in_lobby = await connect(running.url)
        in_b = await connect(running.url + "/b")
        assert await health() == {"open": 3, "loaded": 3, "failing": 0}
        assert await series() == (3, 3, 2, 0)
        in_b.sendClose(1000)
        await until(lambda: rooms.unloads == 1)
        assert await health() == {"open": 2, "loaded": 2, "failing": 0}
        assert await series() == (2, 2, 2, 1)
        in_b = await connect(running.url + "/b")
        for client in (in_a, in_b, in_lobby):
            client.sendClose(1000)
        await until(lambda: rooms.unloads == 3)
        assert await health() == {"open": 0, "loaded": 1, "failing": 0}
        assert await series() == (0, 1, 3, 3)
    finally:
        await running.stop()


@ensureDeferred
async def test_guessing_room_names_is_slowed_and_learns_nothing_while_it_waits(
    data_file,
):
    """An address that keeps asking for rooms that are not there is told to
    wait, for every room, known or not, page or socket: a guesser past its
    budget cannot tell a hit from a miss. Others are not affected."""
    from chatbox.wire.factory import ROOM_GUESS_BURST

    running = await start_server(data_file, "--rooms=class-7a,secret-k3x9")
    try:
        port = running.port
        misses = [await handshake_status(port, f"/guess-{i}") for i in range(40)]
        assert misses[:ROOM_GUESS_BURST] == [404] * ROOM_GUESS_BURST
        assert set(misses[ROOM_GUESS_BURST:]) == {429}
        assert await handshake_status(port, "/secret-k3x9") == 429
        assert (await raw_get(port, "/secret-k3x9"))[0] == 429
        assert (await raw_get(port, "/guess-x"))[0] == 429
        assert await handshake_status(port, "/") == 101  # the default room
        other = await connect(f"{running.url}/secret-k3x9", source="127.0.0.2")
        assert (await other.register("Minh"))["status"] is True
    finally:
        await running.stop()


@ensureDeferred
async def test_public_rooms_are_never_refused_for_guessing(data_file):
    """Past its guessing budget an address (a school's NAT, say) still
    reaches the default room, the listed rooms, and on a server without
    named rooms every path; names no room can have cost nothing."""
    running = await start_server(
        data_file, "--rooms=class-7a,secret-k3x9", "--listed-rooms=class-7a"
    )
    plain = await start_server(data_file.parent / "plain.json")
    try:
        for server in (running, plain):
            for i in range(40):
                await handshake_status(server.port, f"/guess-{i}")
                await raw_get(server.port, "/robots.txt")
        assert await handshake_status(running.port, "/secret-k3x9") == 429
        assert await handshake_status(running.port, "/class-7a") == 101
        assert (await raw_get(running.port, "/class-7a"))[0] == 200
        assert await handshake_status(running.port, "/") == 101
        assert await handshake_status(plain.port, "/chat") == 101
    finally:
        await running.stop()
        await plain.stop()


@ensureDeferred
async def test_heads_of_refusals_and_redirects_write_no_log(data_file):
    """twisted.web logs a line quoting the whole URI for a HEAD that renders
    a body: 2 kB of log per request on one keep-alive connection."""
    from twisted.logger import globalLogPublisher

    running = await start_server(data_file, "--rooms=class-7a")
    running.factory.room_guesses = AddressBuckets(0, 1)
    lines: list[dict] = []
    globalLogPublisher.addObserver(lines.append)
    try:
        long = "?" + "x" * 1500
        for path in ("/Class-7A" + long, "/nope" + long, "/healthz", "/rooms"):
            status = (await raw_get(running.port, path, method="HEAD"))[0]
            assert status in (200, 301, 404), path
        assert [event for event in lines if "xxxxxxxxxx" in repr(event)] == []
        assert not [e for e in lines if "HEAD" in str(e.get("log_format", ""))]
    finally:
        globalLogPublisher.removeObserver(lines.append)
        await running.stop()


@ensureDeferred
async def test_a_refusal_ends_its_connection(data_file):
    """Each ask for a room that is not there costs a new connection, under
    --connection-rate, not one more request down a keep-alive one."""
    from tests.client import WEBSOCKET_HEADERS

    running = await start_server(data_file, "--rooms=class-7a")
    try:
        for websocket in (False, True):
            head = {"Host": "x", **(WEBSOCKET_HEADERS if websocket else {})}
            request = "GET /nope HTTP/1.1\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in head.items()
            )
            answer = await raw_exchange(running.port, (request + "\r\n") * 2)
            assert answer.count(b"HTTP/1.1 404") == 1, (websocket, answer[:200])
            assert b"connection: close" in answer.lower()
    finally:
        await running.stop()


async def raw_exchange(port: int, data: str) -> bytes:
    """Everything the server says to `data` until it closes (10 s at most)."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    class Collect(Protocol):
        def __init__(self) -> None:
            self.data = b""
            self.done: Deferred = Deferred()

        def dataReceived(self, chunk: bytes) -> None:
            self.data += chunk

        def connectionLost(self, reason=None) -> None:
            self.done.callback(self.data)

    protocol = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port), Collect()
    )
    protocol.transport.write(data.encode())
    return await protocol.done.addTimeout(10, reactor)
