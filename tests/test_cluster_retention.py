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
import time

import pytest_twisted
from twisted.internet import reactor

from chatbox.chat.retention import DAY_MS, Retention
from chatbox.chat.room import Imported
from chatbox.cluster.address import parse_redis_url
from chatbox.cluster.room import RedisRoom
from tests.test_cluster import LEASE, redis, sleep  # noqa: F401 (fixtures)

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
