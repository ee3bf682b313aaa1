"""An operator's deletions on one process, at real size, over real sockets.

100,000 messages, each with a content no other holds (a token of 4-byte
characters), so a deleted message is looked for byte for byte in every
file under the data folder. The kill -9 tests run the server as a child
process that takes deletions on its standard input (the admin API is not
part of the one-process backend), killed while a purge is under way.
"""

import json
import random
import re
import signal
import socket
import sys
import time
from pathlib import Path

from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import globalLogPublisher

from chatbox.local.room import LocalRoom
from tests.client import connect, until
from tests.process import START_TIMEOUT, ServerProcess, child_env
from tests.redis_server import RedisServer
from tests.server import start_server
from tests.test_cluster import CHATBOX_REDIS, redis_commands

COUNT = 100_000
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z; message i posted i s later
# Spellings ARNS holds the same as "Mallory", and some it does not.
MALLORY = ["Mallory", "MALLORY", "mallory", "Ma11ory", "\u041c\u0430llory", "MaIlory"]
NOT_MALLORY = ["Mallary", "Malory", "Mallory2"]
TOKEN = re.compile(rb"\xf0\x9f\x92\xac(?:\xf0[\x80-\xbf]{3}){2}\xf0\x9f\x92\xac")


def token(i: int) -> str:
    """Message i's own string: two characters of the Cuneiform block (4
    bytes each in UTF-8) between two speech balloons."""
    return (
        "\U0001f4ac"
        + chr(0x12000 + (i >> 10))
        + chr(0x12000 + (i & 1023))
        + ("\U0001f4ac")
    )


def name_of(i: int) -> str:
    if i % 60 == 20:
        return MALLORY[(i // 60) % len(MALLORY)]
    if i % 60 == 21:
        return NOT_MALLORY[(i // 60) % len(NOT_MALLORY)]
    return f"user{i % 97}"


def write_history(path: Path, count: int = COUNT) -> None:
    """data.json as a long-running server leaves it: ids 1..count."""
    rows = []
    for i in range(1, count + 1):
        millis = BASE_MS + i * 1000
        stamp = time.strftime("%d/%m/%Y, %H:%M:%S", time.localtime(millis / 1000))
        rows.append(
            json.dumps(
                {
                    "id": i,
                    "name": name_of(i),
                    "content": f"message {i} {token(i)}",
                    "timestamp": stamp,
                    "time": millis,
                },
                ensure_ascii=False,
                separators=(",", ":"),
            )
        )
    path.write_text("[\n" + ",\n".join(rows) + "\n]\n", encoding="utf-8")


def mallory_window() -> tuple[int, int, list[int]]:
    """[since, until] holding exactly 1,000 of Mallory's 1,667 messages."""
    mallory = [i for i in range(1, COUNT + 1) if i % 60 == 20]
    assert len(mallory) > 1500
    chosen = mallory[300:1300]
    return BASE_MS + chosen[0] * 1000, BASE_MS + chosen[-1] * 1000, chosen


def tokens_in(folder: Path) -> dict[str, set[bytes]]:
    """Every message token in every file under `folder`, by file."""
    return {
        str(p.relative_to(folder)): set(TOKEN.findall(p.read_bytes()))
        for p in folder.rglob("*")
        if p.is_file()
    }


def assert_gone_and_kept(folder: Path, deleted: set[int], kept: set[int]) -> None:
    assert_gone(folder, deleted)
    history = tokens_in(folder)["data.json"]
    missing = [i for i in kept if token(i).encode() not in history]
    assert not missing, f"{len(missing)} kept messages missing, e.g. {missing[:5]}"


def assert_gone(folder: Path, deleted) -> None:
    """No file holds these messages (checked before the reactor runs on)."""
    gone = {token(i).encode() for i in deleted}
    for name, tokens in tokens_in(folder).items():
        assert not tokens & gone, f"{name} still holds {len(tokens & gone)} deleted"


def stored_ids(path: Path) -> list[int]:
    return [m["id"] for m in json.loads(path.read_text(encoding="utf-8"))]


async def deletion_event(client) -> dict:
    while True:
        event = await client.event(timeout=60)
        if event.get("datatype") == "delete":
            return event


def local_room(server) -> LocalRoom:
    room = server.factory.room
    assert isinstance(room, LocalRoom)
    return room


@ensureDeferred
async def test_deleting_from_100000_messages_leaves_no_trace_and_no_reused_id(
    tmp_path,
):
    data = tmp_path / "data.json"
    write_history(data)
    since, until, chosen = mallory_window()
    server = await start_server(data)
    try:
        watcher = await server.user("Watcher")
        room = local_room(server)
        when = server.factory.timestamps.now()

        started = time.perf_counter()
        # 50,003 is user10's: not one of Mallory's, deleted below.
        assert await room.delete([50_003, 50_003, 10**9], when) == [50_003]
        middle = time.perf_counter() - started
        assert_gone(tmp_path, [50_003])  # from the moment it fires
        event = await deletion_event(watcher)
        assert event["ids"] == [50_003] and event["time"] == when.millis
        page = (await watcher.get(after=50_000, before=50_006))["data"]["message"]
        assert [m["id"] for m in page] == [50_001, 50_002, 50_004, 50_005]
        page = (await watcher.get(before=50_005, limit=3))["data"]["message"]
        assert [m["id"] for m in page] == [50_001, 50_002, 50_004]

        assert await room.delete([COUNT], when) == [COUNT]
        assert_gone(tmp_path, [COUNT])
        assert (await deletion_event(watcher))["ids"] == [COUNT]
        newest = (await watcher.get(limit=1))["data"]["message"]
        assert [m["id"] for m in newest] == [COUNT - 1]

        started = time.perf_counter()
        by_name = await room.delete_by("Mallory", since, until, when)
        scan = time.perf_counter() - started
        assert_gone(tmp_path, by_name)
        assert by_name == chosen  # every spelling, only within the window
        assert (await deletion_event(watcher))["ids"] == chosen
        # Deleted twice: nothing more to remove, nobody told again.
        assert await room.delete_by("mallory", since, until, when) == []
        assert await room.delete([50_003], when) == []

        deleted = {50_003, COUNT, *chosen}
        kept = set(range(1, COUNT + 1)) - deleted
        assert_gone_and_kept(tmp_path, deleted, kept)
        assert (await watcher.say("after the deletions"))["id"] == COUNT + 1
        print(
            f"\ndelete 1 of {COUNT}: {middle * 1000:.0f} ms to purged; "
            f"delete_by 1000: {scan * 1000:.0f} ms to purged"
        )
    finally:
        await server.stop()
    assert_gone_and_kept(tmp_path, deleted, kept)
    ids = stored_ids(data)
    assert len(ids) == COUNT - len(deleted) + 1 and ids[-1] == COUNT + 1

    # Deleting the newest again, then a clean restart: its id stays used.
    again = await start_server(data)
    try:
        reader = await again.user("Reader")
        assert await local_room(again).delete(
            [COUNT + 1], again.factory.timestamps.now()
        ) == [COUNT + 1]
    finally:
        await again.stop()
    third = await start_server(data)
    try:
        reader = await third.user("Reader")
        assert (await reader.say("after a restart"))["id"] == COUNT + 2
        stored = (await reader.get(limit=3))["data"]["message"]
        assert [m["id"] for m in stored] == [COUNT - 2, COUNT - 1, COUNT + 2]
    finally:
        await third.stop()
    assert_gone_and_kept(tmp_path, deleted | {COUNT + 1}, kept)


# -- kill -9 in the middle of a purge, in a real child process --

DRIVER = """
import sys
from pathlib import Path

from twisted.internet import reactor, stdio
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineReceiver

from chatbox import tap
from tests.server import options

globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
service = tap.makeService(options(Path(sys.argv[1]), *sys.argv[2:]), reactor)
factory = service.getServiceNamed("chat").factory


class Orders(LineReceiver):
    delimiter = b"\\n"

    def lineReceived(self, line):
        verb, *args = line.decode().split()
        when = factory.timestamps.now()
        if verb == "delete":
            done = factory.room.delete([int(a) for a in args], when)
        else:
            done = factory.room.delete_by(args[0], int(args[1]), int(args[2]), when)
        done.addCallbacks(
            lambda ids: print("deletion purged:", len(ids), flush=True),
            lambda failure: print("deletion failed:", failure.value, flush=True),
        )


stdio.StandardIO(Orders())
reactor.callWhenRunning(service.startService)
reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
reactor.run()
"""


async def driven(workdir: Path, driver: Path, *args: str) -> ServerProcess:
    process = ServerProcess()
    reactor.spawnProcess(
        process,
        sys.executable,
        [sys.executable, str(driver), str(workdir / "data.json"), *args],
        env=child_env(),
        path=str(workdir),
    )
    await process.started.addTimeout(START_TIMEOUT, reactor)
    return process


@ensureDeferred
async def test_kill_9_in_the_middle_of_purges_keeps_them_deleted(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    folder = tmp_path / "chat"
    folder.mkdir()
    write_history(folder / "data.json")
    since, until, chosen = mallory_window()
    deleted: set[int] = set()
    high = COUNT
    middle_of_purge = 0
    # Each round deletes the newest and one more (or Mallory's 1,000), is
    # killed once the deletion is durable (its event came), after a delay,
    # then checked from a fresh start.
    rounds = [(0.0, "mallory"), (0.0, None), (0.0, None), (0.05, None), (0.3, None)]
    for delay, which in rounds:
        server = await driven(folder, driver)
        watcher = await connect(server.url)
        await watcher.register("Watcher")
        if which == "mallory":
            order = f"delete_by Mallory {since} {until}\n"
            expected = chosen
        else:
            expected = sorted(
                {high, random.choice(sorted(set(range(1, high)) - deleted))}
            )
            order = "delete " + " ".join(map(str, expected)) + "\n"
        server.transport.write(order.encode())
        assert (await deletion_event(watcher))["ids"] == expected
        if delay:
            await deferLater(reactor, delay, lambda: None)
        await server.kill(signal.SIGKILL)
        deleted.update(expected)
        on_disk = b"".join(
            p.read_bytes() for p in folder.iterdir() if p.name.startswith("data")
        )
        if any(token(i).encode() in on_disk for i in expected):
            middle_of_purge += 1  # killed before the purge was done

        again = await driven(folder, driver)
        try:
            assert b"Traceback" not in again.output
            assert b"dropped an incomplete" not in again.output
            reader = await connect(again.url)
            await reader.register("Reader")
            reply = await reader.say(f"round after {high}")
            assert reply["id"] == high + 1, "an id was handed out again"
            high = reply["id"]
        finally:
            await again.kill(signal.SIGTERM)
        assert again.stopped_cleanly, again.output.decode()
        kept = set(range(1, COUNT + 1)) - deleted
        assert_gone_and_kept(folder, deleted, kept)
        ids = stored_ids(folder / "data.json")
        assert not set(ids) & deleted
        assert ids[-1] == high
    print(f"\n{middle_of_purge} of {len(rounds)} kills landed before the purge ended")
    assert middle_of_purge >= 2


# -- concurrency: deletions racing 50 senders and folds --


@ensureDeferred
async def test_deletions_race_50_senders_and_folds(tmp_path):
    data = tmp_path / "data.json"
    server = await start_server(data, "--fold-threshold=20000")
    purges: list[dict] = []

    def observe(event: dict) -> None:
        if "purged {deleted}" in (event.get("log_format") or ""):
            purges.append(event)

    globalLogPublisher.addObserver(observe)
    acked: dict[int, str] = {}
    stop: list[bool] = []
    try:
        room = local_room(server)
        senders = [await server.user(f"sender{i}") for i in range(50)]

        async def chatter(index: int, client) -> None:
            for n in range(60):
                content = f"s{index} n{n} {token(index * 1000 + n)}"
                reply = await client.say(content)
                assert reply["status"] is True, reply
                acked[reply["id"]] = content

        async def deleter() -> list[list[int]]:
            """A deletion of 3 random stored messages every 10 ms, not
            waiting for the last to be purged, and one by name."""
            asked: list[Deferred] = []
            taken: set[int] = set()
            rng = random.Random(7)
            while not stop:
                await deferLater(reactor, 0.01, lambda: None)
                candidates = sorted(set(acked) - taken)
                if len(candidates) < 3:
                    continue
                ids = rng.sample(candidates, 3)
                taken.update(ids)
                asked.append(room.delete(ids, server.factory.timestamps.now()))
                if len(asked) == 20:
                    by_name = await room.delete_by(
                        "SENDER7", None, None, server.factory.timestamps.now()
                    )
                    asked.append(succeed(by_name))
                    taken.update(by_name)
            return [await d for d in asked]

        deleting = Deferred.fromCoroutine(deleter())
        chatting = DeferredList(
            [Deferred.fromCoroutine(chatter(i, c)) for i, c in enumerate(senders)],
            fireOnOneErrback=True,
            consumeErrors=True,
        )
        await chatting
        stop.append(True)
        results = await deleting
        # A burst of deletions in one go shares a single purge.
        before_burst = len(purges)
        remaining = sorted(set(acked) - {i for ids in results for i in ids})
        burst = [
            room.delete([i], server.factory.timestamps.now()) for i in remaining[:30]
        ]
        results += [await d for d in burst]
        assert len(purges) == before_burst + 1
    finally:
        globalLogPublisher.removeObserver(observe)
        await server.stop()
    deleted = {i for ids in results for i in ids}
    assert len(acked) == 50 * 60
    assert len(results) > 50 and len(deleted) > 120
    # By name: every message of sender7's stored when the scan began (those
    # sent since are not in it), but those deleted by id before.
    by_name, before = results[20], {i for ids in results[:20] for i in ids}
    assert sum(map(len, results)) == len(deleted)  # each removed once
    assert by_name, "sender7 had sent nothing?"
    assert by_name == [
        i
        for i, c in sorted(acked.items())
        if c.startswith("s7 ") and i <= by_name[-1] and i not in before
    ]
    kept = set(acked) - deleted
    found = tokens_in(tmp_path)
    gone = {token_of(acked[i]) for i in deleted}
    for name, tokens in found.items():
        assert not tokens & gone, name
    stored = {m["id"]: m["content"] for m in json.loads(data.read_text("utf-8"))}
    assert stored == {i: acked[i] for i in kept}
    print(f"\n{len(results)} deletions during 3,000 sends: {len(purges)} purges")
    assert len(purges) <= len(results) - 29


def token_of(content: str) -> bytes:
    return content.rsplit(" ", 1)[1].encode()


# -- named rooms and announcements --


@ensureDeferred
async def test_a_named_room_deletes_the_same_way(tmp_path):
    data = tmp_path / "data.json"
    server = await start_server(data, "--rooms=class-7a")
    folder = tmp_path / "data.rooms"
    try:
        client = await connect(server.url + "/class-7a")
        await client.register("Bo")
        sent = [(await client.say(f"room {token(i)}"))["id"] for i in range(200)]
        room = await server.factory.rooms.enter("class-7a")
        try:
            when = server.factory.timestamps.now()
            assert await room.delete([sent[-1], sent[50]], when) == [
                sent[50],
                sent[-1],
            ]
            assert (await deletion_event(client))["ids"] == [sent[50], sent[-1]]
            found = tokens_in(folder)
            for name, tokens in found.items():
                assert token(199).encode() not in tokens, name
                assert token(50).encode() not in tokens, name
            assert token(51).encode() in found["class-7a.json"]
        finally:
            server.factory.rooms.leave("class-7a")
    finally:
        await server.stop()
    again = await start_server(data, "--rooms=class-7a")
    try:
        client = await connect(again.url + "/class-7a")
        await client.register("Bo")
        assert (await client.say("after"))["id"] == sent[-1] + 1
        ids = [m["id"] for m in (await client.get())["data"]["message"]]
        assert sent[50] not in ids and sent[-1] not in ids and len(ids) == 199
    finally:
        await again.stop()


@ensureDeferred
async def test_an_announcement_is_stored_and_told_with_its_marker(tmp_path):
    data = tmp_path / "data.json"
    server = await start_server(data)
    try:
        an = await server.user("An")
        room = local_room(server)
        posted = await room.post(
            None, "chatbox", "maintenance at noon", server.factory.timestamps.now(),
            None, mark="announcement",
        )  # fmt: skip
        event = await an.event()
        assert event["datatype"] == "message" and event["announcement"] is True
        assert event["id"] == posted.id and event["name"] == "chatbox"
        plain = await an.say("ok")
        assert "announcement" not in plain
    finally:
        await server.stop()
    again = await start_server(data)
    try:
        reader = await again.user("Reader")
        stored = (await reader.get())["data"]["message"]
        assert [m.get("announcement") for m in stored] == [True, None]
    finally:
        await again.stop()


# -- chatbox-redis with a history that has deletions' gaps --


def redis_get(redis, key: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", redis.port)) as connection:
        connection.sendall(b"GET " + key + b"\r\n")
        reply = b""
        while not reply.endswith(b"\r\n") or reply.count(b"\r\n") < 2:
            reply += connection.recv(4096)
    return reply.split(b"\r\n")[1]


@ensureDeferred
async def test_chatbox_redis_moves_a_history_with_deletions_both_ways(tmp_path):
    data = tmp_path / "data.json"
    server = await start_server(data)
    try:
        an = await server.user("An")
        sent = [(await an.say(f"m{i}"))["id"] for i in range(10)]
        when = server.factory.timestamps.now()
        assert await local_room(server).delete([sent[3], sent[-1]], when)
    finally:
        await server.stop()
    # data.json ends at 9, its journal's mark says ids went to 10.
    assert stored_ids(data) == [1, 2, 3, 5, 6, 7, 8, 9]
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        out, err, code = await getProcessOutputAndValue(
            CHATBOX_REDIS, ["import", "--redis", redis.url, str(data)], child_env()
        )
        assert code == 0, err
        assert b"imported 8 messages" in out
        assert redis_get(redis, b"chatbox:msgid") == b"10"  # 10 is never reused

        # The cluster deletes its newest too (by hand here): export keeps it used.
        redis_commands(redis, b"SET chatbox:msgid 12")
        exported = tmp_path / "out" / "data.json"
        exported.parent.mkdir()
        out, err, code = await getProcessOutputAndValue(
            CHATBOX_REDIS, ["export", "--redis", redis.url, str(exported)], child_env()
        )
        assert code == 0, err
        assert stored_ids(exported) == [1, 2, 3, 5, 6, 7, 8, 9]
    finally:
        await redis.kill(signal.SIGTERM)
    again = await start_server(exported)
    try:
        bo = await again.user("Bo")
        assert (await bo.say("after the move back"))["id"] == 13
    finally:
        await again.stop()


@ensureDeferred
async def test_a_room_with_every_message_deleted_keeps_its_ids_when_unloaded(
    tmp_path,
):
    data = tmp_path / "data.json"
    server = await start_server(data, "--rooms=class-7b", "--room-idle=0.05")
    try:
        rooms = server.factory.rooms
        client = await connect(server.url + "/class-7b")
        await client.register("Bo")
        sent = [(await client.say(f"gone {i}"))["id"] for i in range(3)]
        room = await rooms.enter("class-7b")
        try:
            assert await room.delete(sent, server.factory.timestamps.now()) == sent
        finally:
            rooms.leave("class-7b")
        client.abort()
        await until(lambda: rooms.loaded_count() == 1)  # only the default room
        files = sorted(p.name for p in (tmp_path / "data.rooms").iterdir())
        assert "class-7b.json.journal" in files  # its mark: ids went to 3
        client = await connect(server.url + "/class-7b")
        await client.register("Bo")
        assert (await client.say("back"))["id"] == sent[-1] + 1
    finally:
        await server.stop()
