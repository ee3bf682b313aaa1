"""Verified nicknames (issue 15) on a cluster over a real redis-server.

Nothing on the wire makes a verified claim yet (tokens are another part),
so the nodes here are RedisRooms built in the test's own process with
`RedisRoom.from_address` (tests/test_cluster_moderation.py's `Operator`),
each a node like any other with its own lease and links; the node that
dies is a child process running the same, killed with SIGKILL.

    python -m tests.test_cluster_verified REDIS_URL NODE COUNT

is that child: node NODE claims COUNT nicknames `victimN` in the default
room and as many `roomvictimN` in room class-7a, every other one
verified, prints `claimed`, and waits to be killed.
"""

import random
import signal
import sys
import time
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue

from chatbox.chat.arns import NameTaken
from chatbox.cluster.address import parse_redis_url
from chatbox.cluster.room import RedisRoom
from chatbox.wire import codec, messages
from tests.process import REPOSITORY, child_env
from tests.redis_server import RedisServer
from tests.test_cluster import CHATBOX_REDIS, LEASE, redis, sleep  # noqa: F401
from tests.test_cluster_moderation import moment, redis_cli

ROOM = "class-7a"
USERS = 2000


class Node:
    """A node in this process: its default room (and room class-7a once
    followed), and the events each delivered."""

    def __init__(self, server: RedisServer, node: str) -> None:
        self.room = RedisRoom.from_address(
            parse_redis_url(server.url), reactor, lease=LEASE, node=node
        )
        self.events: list[dict] = []
        self.room.attach(lambda event, exclude: self.events.append(event), print)
        self.room.start()
        self.named: RedisRoom | None = None
        self.named_events: list[dict] = []

    async def ready(self) -> "Node":
        deadline = time.monotonic() + 15
        while not self.room.ready:
            assert time.monotonic() < deadline, "the node never joined"
            await sleep(0.05)
        return self

    async def follow(self, name: str) -> RedisRoom:
        self.named = self.room.named(name)
        self.named.attach(lambda event, exclude: self.named_events.append(event), print)
        assert await self.named.follow(0)
        return self.named

    async def close(self) -> None:
        if self.named is not None:
            await self.named.close()
        await self.room.close()


async def node(server: RedisServer, name: str) -> Node:
    return await Node(server, name).ready()


async def taken(claim: Deferred) -> NameTaken:
    try:
        await claim
    except NameTaken as refused:
        return refused
    raise AssertionError("the claim was not refused")


async def until(check, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "never came true"
        await sleep(0.05)


async def scard(server: RedisServer, key: str) -> int:
    return int(await redis_cli(server, "SCARD", key))


class Child(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.claimed: Deferred = Deferred()
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"claimed" in self.output and not self.claimed.called:
            self.claimed.callback(None)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if not self.claimed.called:
            self.claimed.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(None)


@pytest_twisted.ensureDeferred
async def test_2000_users_a_quarter_verified_on_two_nodes_and_a_dead_one(redis):  # noqa: F811
    one, two = await node(redis, "one"), await node(redis, "two")
    nodes = (one, two)
    owners = [f"user{i}" for i in range(USERS)]
    verified = {i for i in range(USERS) if i % 4 == 0}
    at = {owner: nodes[i % 2] for i, owner in enumerate(owners)}
    # One at a time, so Redis' registration order is this order.
    for i, owner in enumerate(owners):
        await at[owner].room.claim(owner, f"User{i}", moment(), i in verified)
    names = {owner: f"User{i}" for i, owner in enumerate(owners)}
    flagged = {owners[i] for i in verified}

    def expected() -> tuple[list[str], list[str]]:
        online = list(names.values())
        return online, [names[o] for o in names if o in flagged]

    async def pages_agree() -> None:
        online, listed = expected()
        for each in nodes:
            page = await each.room.page(10, None, None, 0)
            assert page.online == online
            assert page.verified == listed
        # What a `get` is answered with, as the wire builds it.
        reply = codec.decode(
            messages.get_ok("x", moment(), page.entries, page.online, page.verified)
        )
        assert reply["data"]["verified"] == listed

    await pages_agree()
    assert len(expected()[1]) == USERS // 4
    assert await scard(redis, "chatbox:verified") == USERS // 4

    # Every node heard every registration, each marked exactly when verified.
    async def heard_all() -> bool:
        return all(
            sum(e["datatype"] == "register" for e in each.events) >= USERS
            for each in nodes
        )

    await until(heard_all)
    for each in nodes:
        joins = [e for e in each.events if e["datatype"] == "register"]
        assert [e["name"] for e in joins] == [f"User{i}" for i in range(USERS)]
        assert [e.get("verified") for e in joins] == [
            True if i in verified else None for i in range(USERS)
        ]

    # A claim of a look-alike says whether its holder is verified.
    for i in range(0, 200, 3):
        other = nodes[(i + 1) % 2]
        refused = await taken(other.room.claim(f"late{i}", f"ＵSER{i}", moment()))
        assert refused.verified is (i in verified), i

    # Renames: verified to not, not to verified, verified to verified.
    shuffled = random.Random(15).sample(owners, 600)
    for n, owner in enumerate(shuffled):
        keep = n % 3 == 0 and owner in flagged
        becomes = keep or n % 3 == 1
        names[owner] = f"Renamed{n}"
        await at[owner].room.rename(owner, names[owner], moment(), becomes)
        (flagged.add if becomes else flagged.discard)(owner)
    # Own exact name: held by the holder itself, verified or not.
    for owner in shuffled[:20]:
        same = at[owner].room.rename(owner, names[owner], moment(), True)
        assert (await taken(same)).verified is (owner in flagged)
    # Leaves.
    for owner in random.Random(7).sample(owners, 500):
        at[owner].room.release(owner, moment())
        names.pop(owner)
        flagged.discard(owner)

    async def released() -> bool:
        online = (await one.room.page(1, None, None, 0)).online
        return len(online) == len(names)

    await until(released)
    await pages_agree()
    assert await scard(redis, "chatbox:verified") == len(flagged)
    # Each rename was told with the mark its new name has.
    changes = [e for e in one.events if e["datatype"] == "change"]
    told = {e["newname"]: e.get("verified", False) for e in changes}
    for owner, name in names.items():
        if name.startswith("Renamed"):
            assert told[name] is (owner in flagged), name

    # A third node claims names in the default room and in class-7a, half
    # verified, and dies: its lease runs out and its flags go with its names.
    await one.follow(ROOM)
    victim = Child()
    reactor.spawnProcess(
        victim,
        sys.executable,
        [sys.executable, "-m", "tests.test_cluster_verified", redis.url, "dead", "100"],
        env=child_env(),
        path=REPOSITORY,
    )
    await victim.claimed.addTimeout(30, reactor)
    page = await one.room.page(1, None, None, 0)
    victims = [f"victim{i}" for i in range(0, 100, 2)]
    assert page.verified == expected()[1] + victims
    named = await one.named.page(1, None, None, 0)
    assert named.verified == [f"roomvictim{i}" for i in range(0, 100, 2)]
    assert await scard(redis, f"chatbox:room:{ROOM}:verified") == 50
    victim.transport.signalProcess(signal.SIGKILL)
    await victim.ended

    async def reaped() -> bool:
        page = await one.room.page(1, None, None, 0)
        return not any(name.startswith("victim") for name in page.online)

    await until(reaped, within=LEASE * 3)
    await pages_agree()
    assert (await one.named.page(1, None, None, 0)).verified == []
    assert await scard(redis, "chatbox:verified") == len(flagged)
    assert await scard(redis, f"chatbox:room:{ROOM}:verified") == 0
    # The freed names carry nothing over to their next holder.
    await two.room.claim("taker", "Victim0", moment())
    assert "Victim0" not in (await one.room.page(1, None, None, 0)).verified
    refused = await taken(one.room.claim("again", "victim0", moment(), True))
    assert refused.verified is False

    # Everyone leaves: no flag is left behind.
    for owner in list(names):
        at[owner].room.release(owner, moment())
    two.room.release("taker", moment())
    await until(lambda: _empty(redis))
    assert await scard(redis, "chatbox:verified") == 0
    await one.close()
    await two.close()


MESSAGES = 10_000


def mark_of(i: int) -> str | None:
    """Message i's mark: mostly verified, some plain, a few announcements."""
    if i % 97 == 0:
        return "announcement"
    return None if i % 5 == 4 else "verified"


@pytest_twisted.ensureDeferred
async def test_10000_verified_messages_outlive_a_redis_kill_9_with_marks(redis):  # noqa: F811
    one, two = await node(redis, "one"), await node(redis, "two")
    await one.room.claim("vy", "Vy", moment(), True)
    await two.room.claim("gu", "Gu", moment())
    ids: dict[int, str | None] = {}
    for start in range(0, MESSAGES, 200):
        batch = []
        for i in range(start, start + 200):
            mark = mark_of(i)
            if mark == "announcement":
                posted = one.room.post(
                    None, "chatbox", f"news {i}", moment(), None, mark
                )
            elif mark == "verified":
                posted = one.room.post("vy", "Vy", f"m{i}", moment(), None, mark)
            else:
                posted = two.room.post("gu", "Gu", f"m{i}", moment(), None)
            batch.append(posted.addCallback(lambda p, mark=mark: (p.id, mark)))
        ids.update(await gatherResults(batch))

    def marked(entry: dict) -> str | None:
        found = [mark for mark in messages.MARKS if entry.get(mark) is True]
        assert len(found) <= 1 and all(entry[m] is True for m in found), (
            entry
        )  # never `false`
        return found[0] if found else None

    async def stored() -> dict[int, str | None]:
        page = await one.room.page(MESSAGES, None, None, 0)
        return {e["id"]: marked(e) for e in map(codec.decode, page.entries)}

    assert await stored() == ids
    assert sum(mark == "verified" for mark in ids.values()) > MESSAGES * 3 // 4

    # Every node was told each message with its mark.
    async def told_all() -> bool:
        return sum(e["datatype"] == "message" for e in two.events) >= MESSAGES

    await until(told_all)
    told = {e["id"]: marked(e) for e in two.events if e["datatype"] == "message"}
    assert told == ids

    await redis.restart()  # SIGKILL, then the same folder
    await until(lambda: _ready(one))
    assert await stored() == ids

    # chatbox-redis export keeps them, and an import into an empty Redis too.
    exported = Path(redis.workdir) / "exported.json"
    await _chatbox_redis("export", redis.url, str(exported))
    await one.close()
    await two.close()
    await redis_cli(redis, "FLUSHALL")
    await _chatbox_redis("import", redis.url, str(exported))
    again = await node(redis, "three")
    assert await _stored_by(again) == ids
    await again.close()


async def _stored_by(each: Node) -> dict[int, str | None]:
    page = await each.room.page(MESSAGES, None, None, 0)
    marks = {}
    for entry in map(codec.decode, page.entries):
        found = [mark for mark in messages.MARKS if entry.get(mark) is True]
        marks[entry["id"]] = found[0] if found else None
    return marks


async def _ready(each: Node) -> bool:
    return each.room.ready and each.room.healthy


async def _chatbox_redis(command: str, url: str, path: str) -> None:
    _, err, code = await getProcessOutputAndValue(
        CHATBOX_REDIS, [command, "--redis", url, path], env=child_env()
    )
    assert code == 0, err


async def _empty(server: RedisServer) -> bool:
    return int(await redis_cli(server, "ZCARD", "chatbox:online")) == 0


def _child(url: str, node_id: str, count: int) -> None:
    async def claim() -> None:
        victim = await node_for(url, node_id)
        named = victim.room.named(ROOM)
        named.attach(lambda event, exclude: None, print)
        assert await named.follow(0)
        for i in range(count):
            await victim.room.claim(f"v{i}", f"victim{i}", moment(), i % 2 == 0)
            await named.claim(f"r{i}", f"roomvictim{i}", moment(), i % 2 == 0)
        print("claimed", flush=True)

    async def node_for(url: str, node_id: str) -> Node:
        return await Node(_Url(url), node_id).ready()

    Deferred.fromCoroutine(claim()).addErrback(
        lambda failure: (print(failure.getTraceback(), flush=True), reactor.stop())
    )
    reactor.run()


class _Url:
    """What Node needs of a RedisServer: its URL."""

    def __init__(self, url: str) -> None:
        self.url = url


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
