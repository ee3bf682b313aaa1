"""Rooms over real sockets: the URL path is the room (docs/PROTOCOL.md, Rooms)."""

import pytest_twisted
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.client import connect, handshake_status
from tests.server import start_server


@pytest_twisted.async_yield_fixture
async def classes(data_file):
    running = await start_server(
        data_file,
        "--rooms=class-7a,class-7b",
        "--listed-rooms=class-7b",
        "--room-idle=0.2",
    )
    yield running
    await running.stop()


@ensureDeferred
async def test_rooms_share_nothing_names_history_or_events(classes):
    url = classes.url
    bo_a = await connect(url + "/class-7a")
    assert (await bo_a.register("Bo"))["status"] is True
    bo_b = await connect(url + "/class-7b")
    assert (await bo_b.register("Bo"))["status"] is True, "ARNS is per room"
    lobby = await classes.user("Bo")
    said = await bo_a.say("only 7a")
    assert said["status"] is True
    an_b = await connect(url + "/class-7b")
    await an_b.register("An")
    assert (await bo_b.event())["name"] == "An"
    await bo_b.no_event_before(an_b)  # nothing of 7a's reached 7b
    an_lobby = await classes.user("An")
    assert (await lobby.event())["name"] == "An"
    await lobby.no_event_before(an_lobby)
    history_b = (await bo_b.get())["data"]["message"]
    assert [(m["id"], m["content"]) for m in history_b] == [(1, "marker")]
    assert (await lobby.get())["data"]["online"] == ["Bo", "An"]
    got = await bo_a.get()
    assert [(m["id"], m["content"]) for m in got["data"]["message"]] == [(1, "only 7a")]


@ensureDeferred
async def test_an_unknown_room_is_refused_at_the_handshake(classes):
    assert await handshake_status(classes.port, "/class-9z") == 404
    assert await handshake_status(classes.port, "/healthz") == 404
    assert await handshake_status(classes.port, "/Class-7A") == 101


@ensureDeferred
async def test_an_idle_room_unloads_and_reloads_with_every_message(classes):
    an = await connect(classes.url + "/class-7a")
    await an.register("An")
    for n in range(50):
        assert (await an.say(f"m{n}"))["status"] is True
    an.sendClose()
    await an.wait_closed()
    rooms = classes.factory.rooms
    while rooms.unloads < 1:
        await deferLater(reactor, 0.05, lambda: None)
    assert rooms.unloads == 1
    assert (classes.data.parent / "data.rooms" / "class-7a.json").exists()
    back = await connect(classes.url + "/class-7a")
    await back.register("An")
    got = await back.get()
    assert [m["content"] for m in got["data"]["message"]] == [
        f"m{n}" for n in range(50)
    ]
