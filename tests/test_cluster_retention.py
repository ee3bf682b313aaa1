"""Retention on a cluster, against a real redis-server: what a room's
retention expired is left out of every read at once (PAGE, ENTRIES), and
the purge removes it from Redis (history, stream, and the append-only file
after the rewrite it asks for), one node at a time under a lease, even when
the node purging is killed half-way.

Big histories are written straight into Redis with the scripts the nodes
use (IMPORT, pipelined POST), not sent by clients: the tests are about what
the nodes then do with them.
"""

import json
import re
import signal
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.utils import getProcessOutputAndValue

from chatbox.admin.tokens import append_line, hash_line
from chatbox.chat.retention import DAY_MS, Retention, RetentionPolicy
from chatbox.chat.room import Imported
from chatbox.cluster import scripts
from chatbox.cluster.address import parse_redis_url
from chatbox.cluster.keys import STREAM_LENGTH, deleted_count_of
from chatbox.cluster.purge import ClusterPurger
from chatbox.cluster.room import (
    PurgeLeaseLost,
    RedisRoom,
    entry_template,
    expire_history,
)
from chatbox.cluster.rooms import RedisRooms
from chatbox.wire.clock import Moment
from tests import process
from tests.http import fetch, metric
from tests.test_cluster import (  # noqa: F401 (fixtures)
    CHATBOX_REDIS,
    LEASE,
    redis,
    sleep,
    start_node,
    user,
)
from tests.test_cluster_moderation import admin, redis_cli

NOW = int(time.time() * 1000)


def imported(count: int, first_ms: int, step_ms: int, tag: str) -> list[Imported]:
    """`count` messages, the first posted at `first_ms`, each `step_ms`
    after the one before; their text names `tag` and their number."""
    return [
        Imported(
            "Ann",
            f"{tag}-{i:06d}",
            "Sun Dec 06 2026 10:00:00 GMT+0000",
            first_ms + i * step_ms,
        )
        for i in range(count)
    ]


async def node_room(server, node: str = "reader") -> RedisRoom:
    """A node's default room in this process (lease, links and all)."""
    room = RedisRoom.from_address(
        parse_redis_url(server.url), reactor, lease=LEASE, node=node
    )
    room.attach(lambda event, exclude: None, lambda owners: None)
    room.start()
    deadline = time.monotonic() + 15
    while not room.ready:
        assert time.monotonic() < deadline, "the node never joined"
        await sleep(0.05)
    return room


async def load(room: RedisRoom, entries: list[Imported]) -> list[int]:
    ids: list[int] = []
    for start in range(0, len(entries), 2000):
        ids += await room.import_entries(entries[start : start + 2000])
    return ids


def contents(encoded: list[bytes]) -> list[str]:
    return [json.loads(entry)["content"] for entry in encoded]


@pytest_twisted.ensureDeferred
async def test_reads_leave_out_what_retention_expired_at_once(redis):  # noqa: F811
    """20,000 messages, 12,000 of them over a day old: with a day's
    retention, get (PAGE) and entries (ENTRIES) see only the 8,000 newest
    at once, with or without before/after; with a count limit, only that
    many newest; imports get new ids after every id handed out."""
    room = await node_room(redis)
    try:
        old = imported(12_000, NOW - 2 * DAY_MS, 1000, "old")
        new = imported(8_000, NOW - DAY_MS // 2, 1000, "new")
        ids = await load(room, old + new)
        assert ids == list(range(1, 20_001))
        first_new = ids[12_000]

        room.retention = Retention(days=1)
        page = await room.page(100_000, None, None, 0)
        assert contents(page.entries) == [m.content for m in new]
        # Paging back past the cut stops at it; paging after an expired id
        # starts at the oldest kept.
        page = await room.page(10, first_new + 5, None, 0)
        assert contents(page.entries) == [m.content for m in new[:5]]
        assert (await room.page(10, first_new, None, 0)).entries == []
        page = await room.page(3, None, 100, 0)
        assert len(page.entries) == 3
        page = await room.page(100_000, None, 100, 0)
        assert contents(page.entries) == [m.content for m in new]
        got = await room.entries(0, 2_500)
        assert [i for i, _ in got] == ids[12_000:14_500]
        got = await room.entries(first_new + 10, 100_000)
        assert [i for i, _ in got] == ids[12_011:]
        assert contents([e for _, e in got]) == [m.content for m in new[11:]]

        room.retention = Retention(messages=500)
        page = await room.page(100_000, None, None, 0)
        assert contents(page.entries) == [m.content for m in new[-500:]]
        assert (await room.page(10, ids[-500], None, 0)).entries == []
        assert [i for i, _ in await room.entries(0, 1000)] == ids[-500:]

        # Both: the stricter wins.
        room.retention = Retention(days=1, messages=10_000)
        assert len((await room.page(100_000, None, None, 0)).entries) == 8_000
        # Nothing kept.
        room.retention = Retention(days=0.0001)
        assert (await room.page(100, None, None, 0)).entries == []
        assert await room.entries(0, 100) == []

        # An import comes after every id, also those expired.
        more = await room.import_entries(imported(3, NOW, 1, "more"))
        assert more == [20_001, 20_002, 20_003]
        room.retention = Retention()
        assert len(await room.entries(0, 100_000)) == 20_003
    finally:
        await room.close()


async def post(commands, messages: list[Imported]) -> None:
    """Each message as a node's POST stores an announcement (history entry
    and `message` event in the stream), pipelined 2,000 at a time."""
    for start in range(0, len(messages), 2000):
        sent = []
        for m in messages[start : start + 2000]:
            when = Moment(m.timestamp, m.millis)
            head, tail = entry_template(m.name, m.content, when, "announcement")
            sent.append(
                commands.run(
                    scripts.POST,
                    "loader",
                    "",
                    m.name,
                    m.content,
                    *when,
                    head,
                    tail,
                    STREAM_LENGTH,
                    "",
                    600_000,
                    50_000,
                    "1",
                )
            )
        await gatherResults(sent)


async def stream_contents(commands) -> list[str]:
    """The content of every `message` entry in a room's stream."""
    link = commands._link
    found, start = [], "-"
    while True:
        chunk = await link.execute("XRANGE", commands.keys.events, start, "+",
                                   "COUNT", 5000)  # fmt: skip
        for _, flat in chunk:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            if fields[b"k"] == b"message":
                found.append(fields[b"c"].decode())
        if len(chunk) < 5000:
            return found
        start = b"(" + chunk[-1][0]


class Nodes:
    """What ClusterPurger needs of the registry: the node's default room."""

    def __init__(self, default: RedisRoom) -> None:
        self.default = default


@pytest_twisted.ensureDeferred
async def test_one_purger_at_a_time_removes_history_and_stream(redis):  # noqa: F811
    """The default room (age) and a room no node follows (count) hold
    expired messages in history and stream: a node that does not hold the
    purge lease removes nothing; the one that does removes exactly the
    expired ones from both, in every room, sends no event, and new
    messages still get higher ids."""
    await redis_cli(redis, "CONFIG", "SET", "appendfsync", "no")  # loads faster
    one, two = await node_room(redis, "one"), await node_room(redis, "two")
    try:
        here = one.commands_for("")
        far = one.commands_for("far")
        await load(one, imported(10_000, NOW - 4 * DAY_MS, 1, "bulk"))
        old = imported(3_000, NOW - 3 * DAY_MS, 1000, "old")
        new = imported(1_000, NOW - DAY_MS // 2, 1000, "new")
        await post(here, old + new)
        await post(far, imported(3_000, NOW - DAY_MS // 2, 1, "far"))
        await far.run(scripts.IMPORT, "far", b'{"id":', b',"name":"x"}')
        policy = RetentionPolicy(Retention(days=1), {"far": Retention(messages=2_000)})
        first, second = (
            ClusterPurger(Nodes(one), reactor),
            ClusterPurger(Nodes(two), reactor),
        )
        assert await first._lease("take") == 1
        assert await second.purge(policy, NOW) is None  # not its turn
        assert len(await stream_contents(here)) == 4_000
        assert await first._lease("release") == 1

        events_before = await here._link.execute("XLEN", here.keys.events)
        assert await first.purge(policy, NOW) == {"": 13_000, "far": 1_001}
        assert await here._link.execute("EXISTS", here.keys.purge) == 0
        assert await stream_contents(here) == [m.content for m in new]
        assert await here._link.execute("GET", deleted_count_of(here.keys.events)) == (
            b"3000"
        )
        far_left = await stream_contents(far)
        assert far_left == [f"far-{i:06d}" for i in range(1_001, 3_000)]
        # No event was added for the purge (nor by the import).
        assert await here._link.execute("XLEN", here.keys.events) == (
            events_before - 3_000
        )
        one.retention = Retention()
        assert len(await one.entries(0, 100_000)) == 1_000
        # Again: nothing more to remove.
        assert await first.purge(policy, NOW) == {}
        # A purger whose lease another node took is stopped by Redis itself,
        # at its next batch, before it removes anything.
        assert await second._lease("take") == 1
        await post(here, imported(10, NOW - 2 * DAY_MS, 1, "late"))
        with pytest.raises(PurgeLeaseLost):
            await expire_history(here, Retention(days=1), NOW, "one")
        assert await here._link.execute("ZCARD", here.keys.history) == 1_010
        assert await first.purge(policy, NOW) is None  # the lease is second's
        # Ids go on rising past the purged ones.
        assert await far.run(scripts.IMPORT, "far", b'{"id":', b"}") == [3_002]
    finally:
        await one.close()
        await two.close()


async def aof_holds(server, *texts: bytes) -> list[bool]:
    """Whether Redis' append-only files (every file of appendonlydir) hold
    each text, once any rewrite has finished."""
    deadline = time.monotonic() + 20
    while True:
        info = (await redis_cli(server, "INFO", "persistence")).decode()
        if "aof_rewrite_in_progress:0" in info and "aof_rewrite_scheduled:0" in info:
            break
        assert time.monotonic() < deadline, "redis never finished its rewrite"
        await sleep(0.05)
    # Redis 7 keeps the AOF as the files its manifest lists (those a rewrite
    # replaced are listed as history, "type h", until they are deleted).
    folder = server.workdir / "appendonlydir"
    while True:
        manifest = next(folder.glob("*.manifest")).read_text().split("\n")
        if not any(line.endswith(" type h") for line in manifest):
            break
        assert time.monotonic() < deadline, "redis kept its old AOF files"
        await sleep(0.05)
    files = [line.split()[1] for line in manifest if line.startswith("file ")]
    assert files, manifest
    data = b"".join((folder / name).read_bytes() for name in files)
    return [text in data for text in texts]


async def purged_metric(node) -> float:
    _, _, body = await fetch(node, "/metrics")
    return metric(body.decode(), "chatbox_retention_purged_messages_total")


async def lease_holder(link) -> bytes | None:
    return await link.execute("GET", "chatbox:purge")


async def v2_history(node) -> list[str]:
    """A bare v2 get's messages, as a new client of `node` sees them."""
    client = await user(node, f"Reader{time.monotonic_ns() % 10_000}")
    try:
        reply = await client.get()
        assert reply["status"] is True, reply
        return [m["content"] for m in reply["data"]["message"]]
    finally:
        client.abort()


@pytest_twisted.ensureDeferred
async def test_two_nodes_purge_in_turn_and_a_killed_purger_is_taken_over(
    tmp_path,
    redis,  # noqa: F811
):
    """A big history (100,000 messages), real nodes. A get shows only what
    retention keeps before any purge ran; node A purges, is killed (-9)
    half-way, and one of B and C (started after) carries on once A's purge
    lease ran out; then the expired text is in neither history, stream nor
    the rewritten append-only file, ids go on rising, and each expired
    message is purged (and counted) once."""
    await redis_cli(redis, "CONFIG", "SET", "aof-use-rdb-preamble", "no")
    await redis_cli(redis, "CONFIG", "SET", "appendfsync", "no")  # loads faster
    loader = await node_room(redis, "loader")
    here, far = loader.commands_for(""), loader.commands_for("far")
    link = here._link
    await load(loader, imported(96_000, NOW - 3 * DAY_MS, 1, "bulk"))
    new = imported(1_000, NOW - DAY_MS // 2, 1000, "new")
    await post(here, imported(3_000, NOW - 2 * DAY_MS, 1000, "old") + new)
    await far.run(scripts.IMPORT, "far", *entry_template("x", "y", Moment("t", NOW)))
    await post(far, imported(2_000, NOW, 1, "far"))
    assert await aof_holds(redis, b"old-000001", b"bulk-000001") == [True, True]
    kept = [m.content for m in new]

    retention = [
        "--retention-days=1",
        "--rooms=far",
        "--room-retention=far:messages=500",
    ]
    a = await start_node(tmp_path, redis, "a", *retention, "--purge-interval=2")
    # Read-time: A's first purge is 2 s away, and A leaves out the expired.
    assert await v2_history(a) == kept
    assert await link.execute("ZCARD", here.keys.history) == 100_000
    # Caught half-way through its purge, A is killed.
    deadline = time.monotonic() + 15
    while await link.execute("ZCARD", here.keys.history) == 100_000:
        assert time.monotonic() < deadline, "node A never purged"
        await sleep(0.002)
    await a.kill()
    left = await link.execute("ZCARD", here.keys.history)
    assert 1_000 < left < 100_000, left
    assert await lease_holder(link) is not None  # A's, running out

    b, c = await gatherResults(
        [
            ensureDeferred(
                start_node(tmp_path, redis, n, *retention, "--purge-interval=1")
            )
            for n in ("b", "c")
        ]
    )
    # What A left behind is expired too, on either node.
    assert await v2_history(b) == await v2_history(c) == kept
    done = re.compile(rb"retention purge on node")
    deadline = time.monotonic() + 15
    while not any(done.search(n.output) for n in (b, c)):
        assert time.monotonic() < deadline, "nobody took over from A"
        await sleep(0.05)
    assert await lease_holder(link) is None
    assert await link.execute("ZCARD", here.keys.history) == 1_000
    assert await stream_contents(here) == kept
    far_left = await stream_contents(far)
    assert far_left == [f"far-{i:06d}" for i in range(1_500, 2_000)]
    assert await aof_holds(
        redis, b"old-000001", b"bulk-000001", b"far-000001", b"new-000001"
    ) == [False, False, False, True]
    # One node took over; A was killed before it could say it had purged.
    assert [len(done.findall(n.output)) for n in (a, b, c)] in ([0, 1, 0], [0, 0, 1])

    # Ids go on rising; later expired messages are purged once.
    writer = await user(b, "Writer")
    reply = await writer.say("after the purge")
    assert reply["status"] is True
    before = [await purged_metric(node) for node in (b, c)]
    await post(far, imported(300, NOW, 1, "later"))
    deadline = time.monotonic() + 15
    while len(await stream_contents(far)) > 500:
        assert time.monotonic() < deadline, "the next purge never came"
        await sleep(0.1)
    await sleep(1.2)  # one more round of both timers: nothing more to purge
    after = [await purged_metric(node) for node in (b, c)]
    assert sum(after) - sum(before) == 300
    history = (await writer.get(after=1))["data"]["message"]
    assert history[-1]["content"] == "after the purge"
    assert history[-1]["id"] == 100_001
    for node in (b, c):
        await node.kill(signal.SIGTERM)
    await loader.close()


async def admin_node_with(tmp_path, server, name: str, *args: str):
    """A cluster node with its admin listener (and `args`); its admin URL."""
    from tests.test_admin import ADMIN_LISTENING, TOKEN

    workdir = tmp_path / name
    workdir.mkdir()
    append_line(str(workdir / "admin-tokens"), hash_line("ops", TOKEN))
    node = await process.start(
        workdir,
        f"--redis={server.url}",
        f"--redis-lease={LEASE}",
        f"--admin-tokens={workdir / 'admin-tokens'}",
        "--admin-port=tcp:0:interface=127.0.0.1",
        *args,
    )
    await node.wait_for(rb"joined the chat cluster")
    await node.wait_for(ADMIN_LISTENING)
    port = re.search(ADMIN_LISTENING, node.output).group(1).decode()
    return node, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("rooms", ["--rooms=quiet", "--rooms=open"])
@pytest_twisted.ensureDeferred
async def test_erase_reaches_a_room_no_node_follows(tmp_path, redis, rooms):  # noqa: F811
    """A room that holds history in Redis but that no node has loaded (its
    people left long ago): `delete-by` through a node's admin API enters it
    for the while, removes that person's messages from history and stream,
    and the room is unloaded as any other (here: when the node stops)."""
    loader = await node_room(redis, "loader")
    keys = loader.commands_for("quiet")
    first = entry_template("x", "x", Moment("t", NOW))
    await keys.run(scripts.IMPORT, "quiet", *first)
    said = imported(300, NOW, 1, "ann")
    said += [
        m._replace(name="Spammer", content=f"spam-{i}")
        for i, m in enumerate(imported(200, NOW, 1, "s"))
    ]
    await post(keys, said)
    node, url = await admin_node_with(tmp_path, redis, "node", rooms)
    try:
        done = await admin(
            url, "delete-by", "SPAMMER", "--room", "quiet", "--reason", "gdpr"
        )
        assert len(done["deleted"]) == 200
        assert await stream_contents(keys) == [m.content for m in said[:300]]
        history = await keys._link.execute("ZRANGE", keys.keys.history, 0, -1)
        assert not any(b"Spammer" in entry for entry in history)
        assert len(history) == 301
        # Counted, so no node's reader takes the XDELs for trimming.
        assert (
            await keys._link.execute("GET", deleted_count_of(keys.keys.events))
            == b"200"
        )
    finally:
        await node.kill(signal.SIGTERM)
    try:
        assert await keys._link.execute("SCARD", keys.keys.followers) == 0
    finally:
        await loader.close()


@pytest_twisted.ensureDeferred
async def test_the_maker_names_every_room_of_the_cluster(redis):  # noqa: F811
    """RedisRooms.names/exists answer from Redis, not from what this node
    loaded: a room made by an import only is there."""
    node = await node_room(redis, "lister")
    try:
        maker = RedisRooms(node, reactor)
        assert await maker.names() == []
        keys = node.commands_for("far")
        await keys.run(scripts.IMPORT, "far", *entry_template("x", "x", Moment("t", 1)))
        assert await maker.names() == ["far"]
        assert await maker.exists("far") is True
        assert await maker.exists("near") is False
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_a_backup_folder_moves_into_redis_and_back(tmp_path, redis):  # noqa: F811
    """`chatbox-redis import --with-rooms` takes the single-process layout
    (data.json, data.rooms/NAME.json: what `chatbox-admin backup` writes)
    into Redis, every room, marks and ids kept; it refuses as a whole when
    any room has a history already; `export --with-rooms` writes the same
    layout back."""
    backup = tmp_path / "backup"
    (backup / "data.rooms").mkdir(parents=True)
    stamp = "Sun Dec 06 2026 10:00:00 GMT+0000"
    default = [
        {"id": 1, "name": "An", "content": "hello", "timestamp": stamp, "time": NOW},
        {"id": 4, "name": "chatbox", "content": "notice", "timestamp": stamp,
         "time": NOW, "announcement": True},
    ]  # fmt: skip
    far = [
        {"id": 2, "name": "Vy", "content": "xin chào", "timestamp": stamp,
         "time": NOW, "verified": True},
    ]  # fmt: skip
    (backup / "data.json").write_text(json.dumps(default, ensure_ascii=False))
    (backup / "data.rooms" / "far.json").write_text(json.dumps(far, ensure_ascii=False))
    command = ["--redis", redis.url, "--with-rooms"]
    out, err, code = await getProcessOutputAndValue(
        CHATBOX_REDIS, ["import", *command, str(backup / "data.json")]
    )
    assert code == 0, err
    assert b"imported 2 messages" in out and b"imported 1 messages" in out
    assert await redis_cli(redis, "SMEMBERS", "chatbox:rooms") == b"far\n"
    # Again, the default room emptied meanwhile: refused as a whole, because
    # room far has a history; the default room is not filled either.
    await redis_cli(redis, "RENAME", "chatbox:history", "kept")
    await redis_cli(redis, "RENAME", "chatbox:msgid", "kept-id")
    _, err, code = await getProcessOutputAndValue(
        CHATBOX_REDIS, ["import", *command, str(backup / "data.json")]
    )
    assert code == 1 and b"(room far) already has a history" in err
    assert await redis_cli(redis, "EXISTS", "chatbox:history") == b"0\n"
    await redis_cli(redis, "RENAME", "kept", "chatbox:history")
    await redis_cli(redis, "RENAME", "kept-id", "chatbox:msgid")

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out, err, code = await getProcessOutputAndValue(
        CHATBOX_REDIS, ["export", *command, str(out_dir / "data.json")]
    )
    assert code == 0, err
    assert json.loads((out_dir / "data.json").read_text()) == default
    assert json.loads((out_dir / "data.rooms" / "far.json").read_text()) == far
