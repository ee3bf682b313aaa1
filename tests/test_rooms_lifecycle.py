"""A room's life in one process: loaded on first join, unloaded when idle,
loaded again with every message; and the moments in between, where a
client arrives as the room closes, many race in while it loads, one leaves
before it has loaded, and an attacker makes up thousands of names.

A load or unload is held, where a test needs its moment, by wrapping the
backend's own `make` or `unload` (Held): everything else is the real
server, files and sockets."""

import json

import pytest
import pytest_twisted
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from tests.client import (
    WEBSOCKET_HEADERS,
    connect,
    handshake_status,
    together,
    until,
    user_at,
)
from tests.http import fetch
from tests.server import start_server


class Held:
    """`maker.<method>(name, ...)` waits until `release()`; `calls` names
    the rooms it was called for, `done` those whose call has finished.
    Made by the `hold` fixture, which releases it before the server stops
    (a failed assertion must not leave the stop waiting forever)."""

    def __init__(self, monkeypatch, maker, method: str) -> None:
        self.calls: list[str] = []
        self.done: list[str] = []
        self._waiting: list[Deferred] = []
        self._open = False
        real = getattr(maker, method)

        def held(name, *args):
            self.calls.append(name)

            def run(_):
                return real(name, *args).addCallback(finished)

            def finished(result):
                self.done.append(name)
                return result

            if self._open:
                return run(None)
            waiting = Deferred()
            self._waiting.append(waiting)
            return waiting.addCallback(run)

        monkeypatch.setattr(maker, method, held)

    def release(self) -> None:
        self._open = True
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            each.callback(None)


@pytest.fixture
def hold(monkeypatch):
    made: list[Held] = []

    def hold(maker, method: str) -> Held:
        made.append(Held(monkeypatch, maker, method))
        return made[-1]

    yield hold
    for held in made:
        held.release()


@pytest_twisted.async_yield_fixture
async def room_a(data_file):
    running = await start_server(
        data_file, "--rooms=a,b", "--listed-rooms=a", "--room-idle=0.05"
    )
    yield running
    await running.stop()


def history(reply: dict) -> list[tuple[int, str]]:
    return [(m["id"], m["content"]) for m in reply["data"]["message"]]


async def leave(*clients) -> None:
    for client in clients:
        client.sendClose(1000)
    for client in clients:
        await client.wait_closed()


@ensureDeferred
async def test_an_idle_room_unloads_and_reloads_with_every_message(room_a):
    rooms = room_a.factory.rooms
    an = await user_at(room_a.url + "/a", "An")
    for n in range(50):
        assert (await an.say(f"m{n}"))["status"] is True
    await leave(an)
    await until(lambda: rooms.unloads == 1)
    assert rooms.loaded_count() == 1
    saved = json.loads((room_a.data.parent / "data.rooms" / "a.json").read_text())
    assert [m["content"] for m in saved] == [f"m{n}" for n in range(50)]
    back = await user_at(room_a.url + "/a", "An")
    assert history(await back.get()) == [(n + 1, f"m{n}") for n in range(50)]
    assert (await back.say("after"))["id"] == 51
    assert rooms.loads == 2


@ensureDeferred
async def test_a_client_arriving_as_the_room_closes_gets_it_back_whole(room_a, hold):
    """An's last sends are still being written as An leaves; the room goes
    idle and starts closing; Bo's handshake arrives then, waits for the
    close (no second owner of the files) and the reload, and finds every
    message, ids going on from there."""
    rooms = room_a.factory.rooms
    unloading = hold(rooms._maker, "unload")
    making = hold(rooms._maker, "make")
    making.release()
    an = await user_at(room_a.url + "/a", "An")
    acked = [(await an.say(f"m{n}"))["id"] for n in range(50)]
    for n in range(50, 100):
        an.send_json({"type": "send", "content": f"m{n}"})
    await leave(an)  # the server reads every send before the close frame
    await until(lambda: unloading.calls == ["a"])
    arriving = Deferred.fromCoroutine(user_at(room_a.url + "/a", "Bo"))
    await until(lambda: rooms.open_count() == 1)
    assert not arriving.called and making.calls == ["a"]
    unloading.release()
    bo = await arriving
    assert unloading.done == ["a"] and making.calls == ["a", "a"]
    assert acked == list(range(1, 51))
    assert history(await bo.get()) == [(n + 1, f"m{n}") for n in range(100)]
    assert (await bo.say("after"))["id"] == 101


@ensureDeferred
async def test_rejoining_at_any_moment_of_an_unload_loses_nothing(data_file):
    """With the room idle after 1 ms, each visitor leaves and the next
    arrives while the room is unloading, unloaded or about to: 40 visits,
    each with messages, and nothing lost, ids gapless."""
    running = await start_server(data_file, "--rooms=a", "--room-idle=0.001")
    try:
        for visit in range(40):
            visitor = await user_at(running.url + "/a", f"v{visit}")
            for n in range(3):
                reply = await visitor.say(f"{visit}.{n}")
                assert reply["id"] == visit * 3 + n + 1, reply
            visitor.sendClose(1000)
            if visit % 2:
                await visitor.wait_closed()
        last = await user_at(running.url + "/a", "last")
        got = history(await last.get())
        wanted = [f"{v}.{n}" for v in range(40) for n in range(3)]
        assert got == list(enumerate(wanted, 1))
        assert running.factory.rooms.unloads > 5, "the race was never run"
    finally:
        await running.stop()


@ensureDeferred
async def test_the_room_list_keeps_a_rooms_activity_while_it_unloads(room_a, hold):
    rooms = room_a.factory.rooms
    unloading = hold(rooms._maker, "unload")
    an = await user_at(room_a.url + "/a", "An")
    newest = (await an.say("hello"))["time"]
    await leave(an)
    await until(lambda: unloading.calls == ["a"])
    _, _, body = await fetch(room_a, "/rooms")
    assert json.loads(body)["rooms"] == [
        {"name": "a", "online": 0, "last_activity": newest}
    ]
    unloading.release()
    await until(lambda: rooms.unloads == 1)
    _, _, body = await fetch(room_a, "/rooms")
    assert json.loads(body)["rooms"][0]["last_activity"] == newest


@ensureDeferred
async def test_ten_thousand_messages_in_a_room_unload_and_reload(data_file):
    running = await start_server(
        data_file, "--rooms=big", "--room-idle=0.05", "--history-cap=20000"
    )
    rooms = running.factory.rooms
    total, window = 10_000, 500
    try:
        an = await user_at(running.url + "/big", "An")
        for start in range(0, total, window):
            for n in range(start, start + window):
                an.send_json({"type": "send", "content": f"m{n}"})
            for n in range(start, start + window):
                reply = await an.reply()
                assert (reply["status"], reply["id"]) == (True, n + 1), reply
        await leave(an)
        await until(lambda: rooms.unloads == 1)
        saved = json.loads((data_file.parent / "data.rooms" / "big.json").read_text())
        assert len(saved) == total and saved[-1]["content"] == f"m{total - 1}"
        back = await user_at(running.url + "/big", "Bo")
        got = history(await back.get())
        assert got == [(n + 1, f"m{n}") for n in range(total)]
        assert history(await back.get(limit=1)) == [(total, f"m{total - 1}")]
        assert (await back.say("one more"))["id"] == total + 1
    finally:
        await running.stop()


@ensureDeferred
async def test_many_racing_into_a_loading_room_load_it_once(room_a, hold):
    rooms = room_a.factory.rooms
    making = hold(rooms._maker, "make")
    crowd = [Deferred.fromCoroutine(connect(room_a.url + "/a")) for _ in range(60)]
    await until(lambda: len(room_a.factory.connections) == 60)
    await until(lambda: rooms.open_count() == 1)
    assert making.calls == ["a"] and not any(d.called for d in crowd)
    assert rooms.loaded_count() == 1
    making.release()
    clients = [await each for each in crowd]
    await together(c.register(f"u{i}") for i, c in enumerate(clients))
    assert making.calls == ["a"] and rooms.loads == 1
    assert (await clients[0].request({"type": "online"}))["count"] == 60
    await clients[0].say("to all")
    for client in clients[1:]:
        while (event := await client.event())["datatype"] != "message":
            pass
        assert event["content"] == "to all"


class _Handshake(Protocol):
    """A handshake sent and never waited for: a browser tab closed at once."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.gone: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.gone.callback(None)


@ensureDeferred
async def test_clients_gone_while_their_room_loads_leave_nothing_behind(room_a, hold):
    """Two handshakes to b: one closes, one vanishes (RST), before b has
    loaded. Once loaded, b has nobody in it, so it unloads after the idle
    time, and, never having held a message, leaves no file."""
    rooms = room_a.factory.rooms
    making = hold(rooms._maker, "make")
    lines = [
        "GET /b HTTP/1.1",
        f"Host: 127.0.0.1:{room_a.port}",
        *(f"{k}: {v}" for k, v in WEBSOCKET_HEADERS.items()),
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", room_a.port)
    leaving = [await connectProtocol(endpoint, _Handshake(request)) for _ in range(2)]
    await until(lambda: rooms.open_count() == 1)
    leaving[0].transport.loseConnection()
    leaving[1].transport.abortConnection()
    for client in leaving:
        await client.gone
    await until(lambda: not room_a.factory.connections)
    assert making.calls == ["b"] and rooms.open_count() == 1
    making.release()
    await until(lambda: rooms.unloads == 1)
    assert (rooms.open_count(), rooms.loaded_count()) == (0, 1)
    assert not list((room_a.data.parent / "data.rooms").glob("b.*"))
    assert all(not client.received for client in leaving)
    # And b is a room like any other afterwards.
    assert await handshake_status(room_a.port, "/b") == 101


@ensureDeferred
async def test_one_address_making_up_thousands_of_rooms_fills_nothing(data_file):
    """Open rooms, --max-rooms 50. One address makes ROOMS_MADE_BURST rooms
    and is then told to wait (429). A crowd of 150 made-up names from 15
    addresses at once: 50 get rooms, the rest 404 or 429, and nothing more
    is loaded. Then 1,000 more names from one address, each visited and
    left: never more than 50 rooms, and once they are idle, none in memory
    and no file in the rooms folder (not one held a message)."""
    from chatbox.wire.factory import ROOMS_MADE_BURST

    running = await start_server(
        data_file, "--rooms=open", "--max-rooms=50", "--room-idle=0.01"
    )
    rooms = running.factory.rooms
    folder = data_file.parent / "data.rooms"

    async def visit(name: str, source: str = "127.0.0.1"):
        try:
            return await connect(f"{running.url}/{name}", source=source)
        except ConnectionError:
            return None

    try:
        alone = [await visit(f"alone-{i}", "127.0.0.99") for i in range(12)]
        assert sum(client is not None for client in alone) == ROOMS_MADE_BURST
        await leave(*[client for client in alone if client is not None])
        await until(lambda: rooms.loaded_count() == 1)
        crowd = await together(
            visit(f"crowd-{i}", f"127.0.0.{2 + i % 15}") for i in range(150)
        )
        inside = [client for client in crowd if client is not None]
        assert len(inside) == 50
        assert rooms.loaded_count() == 51
        await leave(*inside)
        await until(lambda: rooms.loaded_count() == 1)
        await until(lambda: not list(folder.iterdir()))
        statuses = set()
        for batch in range(50):
            names = [f"made-up-{batch}-{i}" for i in range(20)]
            statuses.update(
                await together(handshake_status(running.port, "/" + n) for n in names)
            )
            assert rooms.loaded_count() <= 51
        assert statuses <= {101, 404, 429} and 429 in statuses
        await until(lambda: rooms.loaded_count() == 1 and rooms.open_count() == 0)
        await until(lambda: not list(folder.iterdir()))
        assert rooms.refusal("one-more") is None, "forgotten rooms free their place"
    finally:
        await running.stop()
