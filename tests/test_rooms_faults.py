"""Rooms when things go wrong: kill -9 with several busy rooms, a damaged
room file, a rooms folder the server may not write, and what an operator
leaves lying around (a second server, an older run's files, strays).

Crashes and file modes are real: those servers are `twistd` child
processes (tests/process.py), killed with SIGKILL, or run without the
capabilities that let root ignore a folder's mode."""

import json
import signal

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from chatbox.chat import rooms as rooms_module
from chatbox.local import datafile
from tests.client import raw_get, until, user_at
from tests.http import fetch
from tests.process import WITHOUT_OVERRIDES, start
from tests.server import start_server
from tests.test_durability import Acked, chatter
from tests.test_second_server import refused, snapshot

BUSY_ROOMS = ("r0", "r1", "r2", "r3")


def v2_history(*contents: str) -> str:
    return json.dumps(
        [
            {"name": "An", "content": c, "timestamp": "06/12/2026, 08:00:00"}
            for c in contents
        ]
    )


async def stored(url: str) -> list[tuple[int, str]]:
    reader = await user_at(url, "reader")
    got = (await reader.get())["data"]["message"]
    reader.sendClose(1000)
    return [(m["id"], m["content"]) for m in got]


@ensureDeferred
async def test_kill_9_with_busy_rooms_loses_no_acknowledged_message(tmp_path):
    """Two senders in each of four rooms and in the default room, 8 sends
    in flight each, killed with SIGKILL once every room has 100 acked:
    after a restart every room holds every message it acknowledged, its
    ids gapless from 1, and goes on from there."""
    args = ["--rooms=" + ",".join(BUSY_ROOMS), "--history-cap=1000000"]
    server = await start(tmp_path, *args)
    where = ["", *(f"/{name}" for name in BUSY_ROOMS)]
    acked = {path: Acked() for path in where}
    stop: list[bool] = []
    chatters = []
    for path in where:
        for i in range(2):
            client = await user_at(server.url + path, f"sender{i}")
            chatters.append(
                Deferred.fromCoroutine(chatter(client, i, acked[path], stop))
            )
    everyone = DeferredList(chatters, consumeErrors=True)
    await DeferredList([a.reached(100) for a in acked.values()]).addTimeout(60, reactor)
    await server.kill(signal.SIGKILL)
    await everyone
    assert server.signal == signal.SIGKILL

    again = await start(tmp_path, *args)
    try:
        for path in where:
            history = await stored(again.url + path)
            missing = set(acked[path]) - set(history)
            assert not missing, f"{path}: {len(missing)} acknowledged lost"
            ids = [i for i, _ in history]
            assert ids == list(range(1, len(ids) + 1)), path
            after = await user_at(again.url + path, "after")
            assert (await after.say("after the crash"))["id"] == len(ids) + 1
    finally:
        await again.kill(signal.SIGTERM)
    assert again.stopped_cleanly, again.output.decode()
    for name in BUSY_ROOMS:
        saved = json.loads((tmp_path / "data.rooms" / f"{name}.json").read_text())
        assert {(m["id"], m["content"]) for m in saved} >= set(acked["/" + name])
        assert saved[-1]["content"] == "after the crash"


@pytest.fixture
def logged():
    """Every log line, formatted, while the test runs."""
    lines: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_format"):
            lines.append(event["log_format"].format(**event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


DAMAGE = {
    "not JSON": ("broken.json", '[{"name": "An", "content": "x", "timestamp": "t"}\n{'),
    "a checksum": (
        "broken.json.journal",
        datafile.record(b'{"id":1,"name":"An","content":"x","timestamp":"t"}')
        .decode()
        .replace('"x"', '"y"')
        + datafile.record(
            b'{"id":2,"name":"An","content":"z","timestamp":"t"}'
        ).decode(),
    ),
}


@pytest.mark.parametrize("damage", DAMAGE)
@ensureDeferred
async def test_a_damaged_room_is_refused_alone_and_kept_as_it_was(
    data_file, logged, monkeypatch, damage
):
    """Its handshake gets 503 (no path in the reason), the operator's log
    names the room and the damage; the file is left as it was, and other
    rooms, the default room and /healthz are as if nothing happened. Once
    repaired, the room opens after the failure's wait."""
    monkeypatch.setattr(rooms_module, "FAILED_LOAD_SECONDS", 0.3)
    folder = data_file.parent / "data.rooms"
    folder.mkdir()
    file_name, text = DAMAGE[damage]
    damaged = folder / file_name
    damaged.write_text(text)
    running = await start_server(data_file, "--rooms=broken,good")
    try:
        # Refused as it fails to load, then at once for a while, without
        # reading the file again: the same answer both times.
        for _ in range(2):
            status, headers, body = await raw_get(
                running.port, "/broken", websocket=True
            )
            assert (status, headers.get("content-type")) == (
                503,
                "text/plain; charset=utf-8",
            )
            assert b"room unavailable" in body and str(folder).encode() not in body
        failures = [line for line in logged if "could not load room broken" in line]
        assert len(failures) == 1, logged
        assert file_name in failures[0], failures
        assert damaged.read_text() == text
        good = await user_at(running.url + "/good", "An")
        assert (await good.say("fine"))["id"] == 1
        lobby = await user_at(running.url, "An")
        assert (await lobby.say("fine too"))["id"] == 1
        code, _, health = await fetch(running, "/healthz")
        assert code == 200 and json.loads(health)["status"] == "up"
        # The operator repairs it.
        damaged.write_text(v2_history("repaired") if file_name.endswith("json") else "")
        await until(lambda: running.factory.rooms.refusal("broken") is None, timeout=5)
        back = await user_at(running.url + "/broken", "An")
        got = [m["content"] for m in (await back.get())["data"]["message"]]
        assert got == (["repaired"] if file_name.endswith("json") else [])
    finally:
        await running.stop()


async def until_unloaded(server) -> None:
    """Until the child has no named room in memory (its /healthz says)."""
    for _ in range(500):
        _, _, body = await fetch(server, "/healthz")
        if json.loads(body)["rooms"]["loaded"] == 1:
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the room never unloaded")


@ensureDeferred
async def test_a_rooms_folder_it_may_not_write_refuses_rooms_and_loses_nothing(
    tmp_path,
):
    """Run as an operator's service user is (file modes apply). The folder
    turns read-only under a loaded room: its acknowledged messages are in
    its journal (open already), the unload's fold fails and says so, and a
    restart with the mode fixed has them all. A room that cannot be opened
    is refused with 503; the default room carries on."""
    folder = tmp_path / "data.rooms"
    folder.mkdir()
    (folder / "old.json").write_text(v2_history("from before"))
    args = ["--rooms=old,new,busy", "--room-idle=0.05"]
    server = await start(tmp_path, *args, under=WITHOUT_OVERRIDES)
    try:
        busy = await user_at(server.url + "/busy", "An")
        acked = [(await busy.say(f"m{n}"))["id"] for n in range(30)]
        folder.chmod(0o555)
        acked += [(await busy.say(f"m{n}"))["id"] for n in range(30, 60)]
        assert acked == list(range(1, 61))
        busy.sendClose(1000)
        await busy.wait_closed()
        await until_unloaded(server)
        for room in ("old", "new"):
            for _ in range(2):  # loading fails, then the failure is remembered
                status, _, body = await raw_get(server.port, f"/{room}", True)
                assert status == 503, (room, body)
            assert b"room unavailable" in body
        lobby = await user_at(server.url, "An")
        assert (await lobby.say("still here"))["status"] is True
        await server.wait_for(rb"could not load room new")
        assert b"Permission denied" in server.output
        # The unload could not fold busy's journal, and said what keeps it.
        assert b"could not fold history into data.rooms/busy.json" in server.output
    finally:
        await server.kill(signal.SIGTERM)
        folder.chmod(0o755)
    assert b"Traceback" not in server.output, server.output.decode()
    again = await start(tmp_path, *args)
    try:
        assert await stored(again.url + "/busy") == [
            (n + 1, f"m{n}") for n in range(60)
        ]
        assert await stored(again.url + "/old") == [(1, "from before")]
        assert (await stored(again.url))[0] == (1, "still here")
    finally:
        await again.kill(signal.SIGTERM)
    assert again.stopped_cleanly, again.output.decode()


@ensureDeferred
async def test_a_second_server_on_the_same_data_refuses_and_leaves_rooms_alone(
    tmp_path,
):
    first = await start(tmp_path, "--rooms=open")
    try:
        an = await user_at(first.url + "/class-7a", "An")
        for n in range(20):
            await an.say(f"m{n}")
        folder = tmp_path / "data.rooms"

        def files() -> dict:
            room_files = {
                p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()
            }
            return {**room_files, **snapshot(tmp_path)}

        before = files()
        line = await refused(tmp_path, "--rooms=open")
        assert "is in use by another chatbox" in line
        assert files() == before
        assert (await an.say("after"))["id"] == 21
    finally:
        await first.kill(signal.SIGTERM)
    assert first.stopped_cleanly


@ensureDeferred
async def test_an_older_runs_rooms_folder_is_taken_up_as_it_was_left(data_file):
    """A crashed older run left a room's history, its journal and an old
    journal being folded, and a lock file nobody holds: the room opens with
    every message, in order, and goes on from the last id."""
    folder = data_file.parent / "data.rooms"
    folder.mkdir()

    def entry(n: int) -> bytes:
        return json.dumps(
            {"id": n, "name": "An", "content": f"m{n}", "timestamp": "t"}
        ).encode()

    (folder / "left.json").write_text(
        json.dumps([json.loads(entry(n)) for n in (1, 2)])
    )
    (folder / "left.json.journal.old").write_bytes(datafile.record(entry(3)))
    (folder / "left.json.journal").write_bytes(
        datafile.record(entry(4)) + datafile.record(entry(5))
    )
    (folder / "left.json.lock").write_text("4242\n")
    running = await start_server(data_file, "--rooms=open", "--room-idle=0.05")
    try:
        an = await user_at(running.url + "/left", "An")
        got = [(m["id"], m["content"]) for m in (await an.get())["data"]["message"]]
        assert got == [(n, f"m{n}") for n in range(1, 6)]
        assert (await an.say("m6"))["id"] == 6
    finally:
        await running.stop()
    saved = json.loads((folder / "left.json").read_text())
    assert [m["content"] for m in saved] == [f"m{n}" for n in range(1, 7)]


@ensureDeferred
async def test_stray_files_in_the_rooms_folder_are_no_rooms_and_stay(data_file):
    """An operator's notes, a backup, a hidden file, a folder, a name in
    capitals: none is a room, none counts toward --max-rooms, and none is
    touched when rooms beside them come and go."""
    folder = data_file.parent / "data.rooms"
    folder.mkdir()
    strays = {
        "README.txt": "rooms of 2026",
        "notes": "a name a room could have, without .json",
        "class-7a.json.bak": "[]",
        ".hidden.json": "[]",
        "Class-7B.json": v2_history("a copy"),
        "a b.json": "[]",
        "lớp-7a.json": "[]",
        "x.json.journal.tmp": "",
    }
    for name, text in strays.items():
        (folder / name).write_text(text)
    (folder / "old-year").mkdir()
    running = await start_server(
        data_file, "--rooms=open", "--max-rooms=2", "--room-idle=0.05"
    )
    rooms = running.factory.rooms
    try:
        first = await user_at(running.url + "/class-7a", "An")
        second = await user_at(running.url + "/class-7c", "An")
        assert [m for m in (await second.get())["data"]["message"]] == []
        for client in (first, second):
            client.sendClose(1000)
        await until(lambda: rooms.unloads == 2)
    finally:
        await running.stop()
    assert sorted(p.name for p in folder.iterdir()) == sorted([*strays, "old-year"])
    for name, text in strays.items():
        assert (folder / name).read_text() == text


@ensureDeferred
async def test_names_that_failed_to_load_do_not_fill_the_room_limit(
    data_file, monkeypatch
):
    """Open rooms, --max-rooms 2, and no room can be made for a while (the
    rooms folder's place is taken by a file, as a full disk or a lack of
    open files would): two made-up names are refused with 503. Once the
    operator has fixed it, new names open again: a room that never loaded
    holds no history, so it holds no place either."""
    monkeypatch.setattr(rooms_module, "FAILED_LOAD_SECONDS", 0.05)
    running = await start_server(data_file, "--rooms=open", "--max-rooms=2")
    rooms = running.factory.rooms
    blocker = data_file.parent / "data.rooms"
    blocker.write_text("not a folder")  # (at start-up: refused, and said)
    try:
        for name in ("first", "second"):
            status, _, _ = await raw_get(running.port, f"/{name}", websocket=True)
            assert status == 503, name
        blocker.unlink()
        await until(lambda: rooms.refusal("second") is None)
        for name in ("third", "fourth"):
            room = await user_at(f"{running.url}/{name}", "An")
            assert (await room.say("at last"))["id"] == 1
    finally:
        await running.stop()
