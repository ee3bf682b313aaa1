"""Rooms over real sockets, one process: the URL path is the room, and
nothing of one room (names, history, ids, events, who is online) reaches
another (docs/PROTOCOL.md, Rooms; /work/notes/rooms-spec.md).

The other room files: test_rooms_names.py (paths, policy, GET /rooms,
/healthz, /metrics), test_rooms_lifecycle.py (loading, unloading, races,
an attacker's names), test_rooms_faults.py (kill -9, damaged and
unwritable files, an operator's leftovers).
"""

import json

import pytest_twisted
from pytest_twisted import ensureDeferred

from tests import test_classic_client
from tests.client import (
    classic_browser,
    connect,
    no_events_before,
    together,
    user_at,
)
from tests.server import start_server

ROOMS = ("class-7a", "class-7b")


@pytest_twisted.async_yield_fixture
async def classes(data_file):
    running = await start_server(
        data_file, "--rooms=" + ",".join(ROOMS), "--listed-rooms=class-7b"
    )
    yield running
    await running.stop()


def contents(reply: dict) -> list[tuple[int, str, str]]:
    return [(m["id"], m["name"], m["content"]) for m in reply["data"]["message"]]


@ensureDeferred
async def test_every_event_kind_stays_in_its_room(classes):
    """Join, rename, message, typing and leave in 7a; watchers in 7b and in
    the default room see none of them. Each 7a event is first seen by a
    7a watcher: the room broadcasts to its audience in one call, so by then
    a stray copy would already be written to the other watchers' sockets,
    ahead of the marker each of their rooms sends next."""
    url = classes.url
    watch_a = await user_at(url + "/class-7a", "Watcher")
    watch_b = await user_at(url + "/class-7b", "Watcher")
    marker_b = await user_at(url + "/class-7b", "Marker")
    watch_lobby = await user_at(url, "Watcher")
    marker_lobby = await user_at(url, "Marker")
    assert (await watch_b.event())["name"] == "Marker"
    assert (await watch_lobby.event())["name"] == "Marker"

    an = await user_at(url + "/class-7a", "An")
    assert (await watch_a.event())["datatype"] == "register"
    assert (await an.register("Anh"))["status"] is True
    assert (await watch_a.event())["datatype"] == "change"
    said = await an.say("only in 7a")
    assert (said["status"], said["id"]) == (True, 1)
    assert (await watch_a.event())["datatype"] == "message"
    an.send_json({"type": "typing"})
    assert (await watch_a.event()) == {
        "type": "receive",
        "datatype": "typing",
        "name": "Anh",
    }
    an.sendClose(1000)
    assert (await watch_a.event())["datatype"] == "leave"

    await no_events_before([watch_b], marker_b)
    await no_events_before([watch_lobby], marker_lobby)
    seen = watch_b.raw + watch_lobby.raw
    assert not [m for m in seen if "Anh" in json.dumps(m) or m.get("name") == "An"]

    # And back: what 7b and the lobby did never reached 7a.
    marker_a = await user_at(url + "/class-7a", "Marker")
    assert (await watch_a.event())["name"] == "Marker"
    await watch_a.no_event_before(marker_a, "m7a")
    history_a = contents(await watch_a.get())
    assert history_a == [(1, "Anh", "only in 7a"), (2, "Marker", "m7a")]
    assert contents(await watch_b.get()) == [(1, "Marker", "marker")]
    assert contents(await watch_lobby.get()) == [(1, "Marker", "marker")]


@ensureDeferred
async def test_names_are_unique_per_room_and_look_alikes_may_live_in_two(classes):
    url = classes.url
    bo_a = await user_at(url + "/class-7a", "Bo")
    intruder = await connect(url + "/class-7a")
    for name in ("Bo", "BO", "Βo"):  # the last with a Greek capital beta
        reply = await intruder.register(name)
        assert (reply["status"], reply["reason"]) == (False, "NameAlreadyUsed"), name
    # A look-alike is free in another room, and ARNS holds within it too.
    beta_b = await connect(url + "/class-7b")
    assert (await beta_b.register("Βo"))["status"] is True
    shouting = await connect(url)
    assert (await shouting.register("BO"))["status"] is True
    for where, taken in (("/class-7b", "Bo"), ("", "Bo")):
        late = await connect(url + where)
        reply = await late.register(taken)
        assert (reply["status"], reply["reason"]) == (False, "NameAlreadyUsed")
    # Leaving one room frees the name in that room only.
    bo_a.sendClose(1000)
    await bo_a.wait_closed()
    reply = await intruder.register("Bo")
    assert reply["status"] is True
    assert (await intruder.get())["data"]["online"] == ["Bo"]


@ensureDeferred
async def test_get_and_online_answer_for_the_room_only(classes):
    url = classes.url
    in_a = [await user_at(url + "/class-7a", f"a{i}") for i in range(3)]
    in_b = [await user_at(url + "/class-7b", f"b{i}") for i in range(2)]
    lobby = await user_at(url, "lobby")
    passer_by = await connect(url + "/class-7b")  # not registered
    assert await passer_by.request({"type": "online"}) == {
        "type": "online",
        "status": True,
        "count": 2,
    }
    assert (await in_a[0].request({"type": "online"}))["count"] == 3
    assert (await lobby.request({"type": "online"}))["count"] == 1
    assert (await in_a[2].get())["data"]["online"] == ["a0", "a1", "a2"]
    assert (await in_b[0].get())["data"]["online"] == ["b0", "b1"]
    assert (await lobby.get())["data"]["online"] == ["lobby"]
    for i in range(3):
        assert (await in_b[1].say(f"b says {i}"))["id"] == i + 1
    assert (await in_a[0].say("a says"))["id"] == 1, "each room's ids start at 1"
    assert (await lobby.say("lobby says"))["id"] == 1
    assert contents(await in_a[1].get(limit=10)) == [(1, "a0", "a says")]
    assert contents(await in_b[0].get(after=1)) == [
        (2, "b1", "b says 1"),
        (3, "b1", "b says 2"),
    ]
    assert contents(await lobby.get(before=5)) == [(1, "lobby", "lobby says")]


@ensureDeferred
async def test_twenty_rooms_at_once_each_hears_only_itself(data_file):
    """20 rooms x 4 users, all sending at once: each user's events, history
    and online list are its own room's, ids 1.. in every room."""
    names = [f"room-{i:02}" for i in range(20)]
    running = await start_server(data_file, "--rooms=" + ",".join(names))
    try:
        users = {
            name: await together(
                [user_at(f"{running.url}/{name}", f"{name}-u{u}") for u in range(4)]
            )
            for name in names
        }

        async def chatter(name: str, u: int, client) -> None:
            for n in range(5):
                reply = await client.say(f"{name}/{u}/{n}")
                assert reply["status"] is True, reply

        await together(
            [
                chatter(name, u, client)
                for name, clients in users.items()
                for u, client in enumerate(clients)
            ]
        )
        for name, clients in users.items():
            for client in clients:
                got = (await client.get())["data"]
                assert sorted(got["online"]) == [f"{name}-u{u}" for u in range(4)]
                messages = got["message"]
                assert [m["id"] for m in messages] == list(range(1, 21))
                assert all(m["content"].startswith(name + "/") for m in messages)
                for event in client.raw:
                    if event.get("type") == "receive":
                        assert name in json.dumps(event), (name, event)
    finally:
        await running.stop()


@ensureDeferred
async def test_the_default_room_is_as_before_data_json_and_every_shape(data_file):
    """A server with rooms keeps the default room's history in data.json,
    nothing of it in the rooms folder; a room's replies and events have
    exactly the default room's shapes (a client cannot tell them apart)."""
    running = await start_server(data_file, "--rooms=class-7a")
    shapes = {}
    try:
        for where in ("", "/class-7a"):
            an = await user_at(running.url + where, "An")
            bo = await connect(running.url + where)
            registered = await bo.register("Bo")
            said = await an.say("hello")
            got = await bo.get()
            online = await bo.request({"type": "online"})
            renamed = await bo.register("Bao")
            nonsense = await bo.request({"type": "nonsense"})
            events = [await an.event() for _ in range(2)]
            events.append(await bo.event())
            bo.sendClose(1000)
            events.append(await an.event())
            assert [e["datatype"] for e in events] == [
                "register",
                "change",
                "message",
                "leave",
            ]
            replies = [registered, said, got, online, renamed, nonsense]
            shapes[where] = (
                [sorted(r) for r in replies],
                [sorted(m) for m in got["data"]["message"]],
                [sorted(e) for e in events],
            )
            assert (said["id"], got["data"]["online"]) == (1, ["An", "Bo"])
            an.sendClose(1000)
            await an.wait_closed()
    finally:
        await running.stop()
    assert shapes[""] == shapes["/class-7a"]
    saved = json.loads(data_file.read_text())
    assert [(m["name"], m["content"]) for m in saved] == [("An", "hello")]
    assert sorted(p.name for p in data_file.parent.iterdir()) == [
        "data.json",
        "data.json.journal",
        "data.json.lock",
        "data.json.sends",
        "data.rooms",
    ]
    assert sorted(p.name for p in (data_file.parent / "data.rooms").iterdir()) == [
        "class-7a.json",
        "class-7a.json.journal",
        "class-7a.json.lock",
        "class-7a.json.sends",
    ]


@ensureDeferred
async def test_a_rooms_file_is_a_v2_history_any_server_can_serve(data_file):
    """data.rooms/NAME.json, once the server has stopped, is a v2 JSON
    array (name, content, timestamp as v2 wrote them): a server given it as
    --data serves the room's history as its default room, and data.json
    copied into the rooms folder becomes a room."""
    running = await start_server(data_file, "--rooms=class-7a,copied")
    try:
        an = await user_at(running.url + "/class-7a", "An")
        for n in range(5):
            await an.say(f"7a {n}")
        lobby = await user_at(running.url, "Lobby")
        await lobby.say("lobby")
    finally:
        await running.stop()
    room_file = data_file.parent / "data.rooms" / "class-7a.json"
    saved = json.loads(room_file.read_text())
    assert isinstance(saved, list) and len(saved) == 5
    for n, entry in enumerate(saved):
        assert (entry["name"], entry["content"]) == ("An", f"7a {n}")
        assert isinstance(entry["timestamp"], str)

    (data_file.parent / "data.rooms" / "copied.json").write_bytes(
        data_file.read_bytes()
    )
    (data_file.parent / "alone").mkdir()
    alone = data_file.parent / "alone" / "data.json"
    alone.write_bytes(room_file.read_bytes())
    plain = await start_server(alone)
    again = await start_server(data_file, "--rooms=class-7a,copied")
    try:
        reader = await user_at(plain.url, "Reader")
        assert [c for _, _, c in contents(await reader.get())] == [
            f"7a {n}" for n in range(5)
        ]
        copied = await user_at(again.url + "/copied", "Reader")
        assert contents(await copied.get()) == [(1, "Lobby", "lobby")]
        assert (await copied.say("next"))["id"] == 2
    finally:
        await plain.stop()
        await again.stop()


@ensureDeferred
async def test_the_classic_clients_session_in_a_named_room(classes, monkeypatch):
    """tests/test_classic_client.py's sessions, unchanged, with the classic
    browser pointed at a room's URL: in 7a, then 7b (An and Bo still online
    in 7a, so their names are taken there only), then the default room, each
    starting from an empty history and an online list of its own two."""
    for where in ("/class-7a", "/class-7b", ""):
        monkeypatch.setattr(
            test_classic_client,
            "browser",
            lambda port, where=where: classic_browser(port, where),
        )
        await test_classic_client.test_a_classic_session(classes)
    monkeypatch.setattr(
        test_classic_client, "browser", lambda port: classic_browser(port, "/class-7b")
    )
    # The bundled client's extensions beside a classic client, in a room where
    # An is already taken: it runs in a fresh room instead.
    running = await start_server(classes.data.parent / "other.json", "--rooms=class-7b")
    try:
        await test_classic_client.test_a_classic_session_beside_the_bundled_clients_extensions(  # noqa: E501
            running
        )
    finally:
        await running.stop()
