"""Moderation on a cluster, over a real redis-server: deletions, announcements
and the moderation orders, across real nodes.

The chat nodes whose clients watch are `twistd -n chatbox --redis ...` child
processes (tests/test_cluster.py's `start_node`); the operator's node is a
RedisRoom built in the test's own process with `RedisRoom.from_address`,
a node like any other (its own lease and links), because nothing on the
wire calls `delete` yet: the admin API does, and it is built elsewhere.
"""

import json
import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue

from chatbox.admin.tokens import append_line, hash_line
from chatbox.chat.room import RoomError
from chatbox.cluster import scripts
from chatbox.cluster.address import parse_redis_url
from chatbox.cluster.link import RedisInDoubt
from chatbox.cluster.moderation import RedisModeration
from chatbox.cluster.room import RedisRoom
from chatbox.wire import messages
from chatbox.wire.clock import Moment, Timestamps
from tests import process
from tests.client import connect
from tests.redis_server import RedisServer
from tests.test_admin import TOKEN, run_cli
from tests.test_cluster import (  # noqa: F401 (fixtures)
    LEASE,
    redis,
    room_nodes,
    room_user,
    sleep,
    start_node,
    user,
)

ANNOUNCER = "chatbox"


def moment(millis: int | None = None) -> Moment:
    """Now, or the instant `millis` (epoch ms), as a room is given it."""
    if millis is None:
        return Timestamps().now()
    return Timestamps(lambda: millis / 1000).now()


class Operator:
    """A node in this process: its default room, and what it delivered."""

    def __init__(self, server: RedisServer, node: str) -> None:
        self.room = RedisRoom.from_address(
            parse_redis_url(server.url), reactor, lease=LEASE, node=node
        )
        self.events: list[dict] = []
        self.room.attach(lambda event, exclude: self.events.append(event), print)
        self.room.start()
        self.owners = 0

    async def ready(self) -> "Operator":
        deadline = time.monotonic() + 15
        while not self.room.ready:
            assert time.monotonic() < deadline, "the operator's node never joined"
            await sleep(0.05)
        return self

    async def speaker(self, name: str) -> object:
        """A connection of this node holding `name`."""
        self.owners += 1
        owner = f"owner{self.owners}"
        await self.room.claim(owner, name, moment())
        return owner

    async def history(self) -> list[dict]:
        entries, *_ = await self.room.page(100_000, None, None, 0)
        return [json.loads(entry) for entry in entries]

    async def close(self) -> None:
        await self.room.close()


async def operator(server: RedisServer, node: str = "operator") -> Operator:
    return await Operator(server, node).ready()


async def redis_cli(server: RedisServer, *args: str) -> bytes:
    out, err, code = await getProcessOutputAndValue(
        "redis-cli", ["-p", str(server.port), *args]
    )
    assert code == 0, err
    return out


async def keys_holding(server: RedisServer, text: bytes) -> list[str]:
    """Every key in Redis whose value holds `text`, whatever its type:
    history, streams, sends, bells, the moderation keys..."""
    keys = (await redis_cli(server, "--scan", "--pattern", "*")).decode().split()
    assert keys, "redis holds no key at all"
    read = {
        "string": ("GET",),
        "hash": ("HGETALL",),
        "zset": ("ZRANGE", "0", "-1", "WITHSCORES"),
        "set": ("SMEMBERS",),
        "list": ("LRANGE", "0", "-1"),
        "stream": ("XRANGE", "-", "+"),
    }
    holding = []
    for key in keys:
        kind = (await redis_cli(server, "TYPE", key)).decode().strip()
        command, *rest = read[kind]
        value = await redis_cli(server, command, key, *rest)
        if text in value or text in key.encode():
            holding.append(key)
    return holding


async def message_ids_in_stream(server: RedisServer, stream: str) -> list[int]:
    """The ids of the `message` entries of `stream`, in stream order."""
    out = (await redis_cli(server, "XRANGE", stream, "-", "+")).decode()
    lines = out.splitlines()
    ids = []
    for i, line in enumerate(lines[:-1]):
        if line == "id" and i > 0:
            ids.append(int(lines[i + 1]))
    return ids


@pytest_twisted.async_yield_fixture
async def chat_nodes(tmp_path: Path, redis: RedisServer):  # noqa: F811
    started = [await start_node(tmp_path, redis, f"node{i}") for i in (1, 2)]
    yield started
    for node in started:
        await node.kill(signal.SIGTERM)


@pytest_twisted.ensureDeferred
async def test_a_deletion_reaches_every_node_and_leaves_no_trace(chat_nodes, redis):  # noqa: F811
    one, two = chat_nodes
    an = await user(one, "An")
    bo = await user(two, "Bo")
    await an.event()  # Bo joined
    op = await operator(redis)
    said = []
    for text in ("first", "secret-7f3a9c xin chào", "third"):
        reply = await an.say(text)
        said.append(reply["id"])
        assert (await bo.event())["content"] == text
    secret = said[1]
    # A send_id to retry later: its reply "already stored" must not bring
    # the message back.
    bo.send_json({"type": "send", "content": "secret-b0b", "send_id": "s-1"})
    bo_secret = (await bo.reply())["id"]
    assert (await an.event())["id"] == bo_secret

    when = moment()
    removed = await op.room.delete([secret, bo_secret, 999_999, secret], when)
    assert removed == sorted([secret, bo_secret])
    for client in (an, bo):
        event = await client.event()
        assert event == {
            "type": "receive",
            "datatype": "delete",
            "ids": removed,
            "timestamp": when.text,
            "time": when.millis,
        }
    # ...and on the operator's node, to its own audience, in the stream's order.
    deadline = time.monotonic() + 5
    while not any(e.get("datatype") == "delete" for e in op.events):
        assert time.monotonic() < deadline
        await sleep(0.02)

    for client in (an, bo):
        got = (await client.get())["data"]["message"]
        assert [m["id"] for m in got] == [said[0], said[2]]
    assert [m["id"] for m in await op.history()] == [said[0], said[2]]
    assert await keys_holding(redis, b"secret-") == []
    # The message count every node reports follows the deletion.
    assert op.room.message_count() == 2

    # The retry of a deleted send stores nothing and tells no one.
    bo.send_json({"type": "send", "content": "secret-b0b", "send_id": "s-1"})
    assert (await bo.reply())["id"] == bo_secret
    assert await keys_holding(redis, b"secret-b0b") == []
    # A second deletion of the same ids removes nothing and tells nothing.
    assert await op.room.delete([secret], moment()) == []
    assert (await an.say("after"))["id"] == bo_secret + 1  # ids never reused
    assert (await bo.event())["content"] == "after"
    await op.close()


@pytest_twisted.ensureDeferred
async def test_an_announcement_is_seen_on_every_node_with_its_marker(
    chat_nodes,
    redis,  # noqa: F811
):
    one, two = chat_nodes
    an = await user(one, "An")
    bo = await user(two, "Bo")
    await an.event()
    op = await operator(redis)
    when = moment()
    posted = await op.room.post(
        None, ANNOUNCER, "bảo trì lúc 22h", when, None, "announcement"
    )
    expected = {
        "type": "receive",
        "datatype": "message",
        "name": ANNOUNCER,
        "content": "bảo trì lúc 22h",
        "timestamp": when.text,
        "time": when.millis,
        "id": posted.id,
        "announcement": True,
    }
    assert await an.event() == expected
    assert await bo.event() == expected
    entry = {k: v for k, v in expected.items() if k not in ("type", "datatype")}
    for client in (an, bo):
        assert (await client.get())["data"]["message"][-1] == entry
    assert (await op.history())[-1] == entry
    # An ordinary message has no marker.
    assert "announcement" not in (await an.say("ok"))
    assert "announcement" not in await bo.event()
    await op.close()


@pytest_twisted.ensureDeferred
async def test_deleting_in_a_room_of_10000_messages(redis):  # noqa: F811
    """10,000 messages with joins, leaves and typing between them: each
    deleted message's stream entry is found and removed, and no other."""
    op = await operator(redis)
    owner = await op.speaker("An")
    for i in range(10_000):
        if i % 7 == 0:
            op.room.typing(owner, "An", moment())
        if i % 1000 == 0:
            other = await op.speaker(f"Guest{i}")
            op.room.release(other, moment())
        await op.room.post(owner, "An", f"m{i}", moment(), None)
    stream = op.room._keys.events
    in_stream = await message_ids_in_stream(redis, stream)
    assert len(in_stream) == 10_000
    rng = random.Random(14)
    doomed = sorted({1, 2, 5_000, 9_999, 10_000, *rng.sample(range(1, 10_001), 300)})
    started = time.perf_counter()
    removed = await op.room.delete(doomed, moment())
    took = time.perf_counter() - started
    print(f"\ndeleted {len(doomed)} of 10,000 in {took * 1000:.1f} ms")
    assert removed == doomed
    left = await message_ids_in_stream(redis, stream)
    assert left == [i for i in in_stream if i not in set(doomed)]
    history = [m["id"] for m in await op.history()]
    assert history == left
    for one in (3, 7_777, 9_998):  # one at a time, near either end and between
        if one in doomed:
            continue
        started = time.perf_counter()
        assert await op.room.delete([one], moment()) == [one]
        print(f"one deletion: {(time.perf_counter() - started) * 1000:.2f} ms")
        assert one not in await message_ids_in_stream(redis, stream)
    await op.close()


@pytest_twisted.ensureDeferred
async def test_delete_by_takes_every_look_alike_spelling_within_the_times(redis):  # noqa: F811
    op = await operator(redis)
    base = 1_795_964_709_000
    spellings = ["Alice", "ALICE", "\u0410lice", "\uff21lice", "alice\u3164"]
    said: dict[int, tuple[str, int]] = {}
    for i, name in enumerate(spellings * 3):
        owner = await op.speaker(name)
        at = base + i * 60_000
        said[(await op.room.post(owner, name, f"spam {i}", moment(at), None)).id] = (
            name,
            at,
        )
        keep = await op.speaker("Bob")
        said[(await op.room.post(keep, "Bob", f"fine {i}", moment(at), None)).id] = (
            "Bob",
            at,
        )
        op.room.release(owner, moment())
        op.room.release(keep, moment())
        await op.room.flush()
    since, until = base + 3 * 60_000, base + 11 * 60_000
    removed = await op.room.delete_by("alice", since, until, moment())
    expected = sorted(
        i for i, (name, at) in said.items() if name != "Bob" and since <= at <= until
    )
    assert removed == expected and len(expected) == 9
    # Open bounds: the rest of Alice's, none of Bob's.
    rest = await op.room.delete_by("аlice", None, None, moment())
    assert rest == sorted(
        i for i, (name, _) in said.items() if name != "Bob" and i not in expected
    )
    assert [m["name"] for m in await op.history()] == ["Bob"] * 15
    await op.close()


# -- moderation orders --


class State:
    """Stands in for chatbox.chat.moderation.Moderation: the orders applied,
    in order, as its state."""

    def __init__(self, snapshot: dict) -> None:
        self.orders: list[dict] = list(snapshot.get("orders", []))
        self.applied_at: dict[int, float] = {}

    def apply(self, order: dict) -> None:
        self.orders.append(order)
        self.applied_at[order["n"]] = time.monotonic()

    def snapshot(self) -> dict:
        return {"orders": list(self.orders)}

    def restore(self, snapshot: dict) -> None:
        self.orders = list(snapshot.get("orders", []))


async def moderated(op: Operator) -> tuple[RedisModeration, State]:
    state = State({})
    store = RedisModeration(op.room, reactor, state.snapshot, state.restore)
    state.restore(await store.load())
    store.start(state.apply)
    return store, state


def order(n: int) -> dict:
    return {"op": "slow", "room": "", "seconds": n, "by": "test", "n": n}


@pytest_twisted.ensureDeferred
async def test_orders_reach_every_node_in_one_order_within_a_poll(redis):  # noqa: F811
    a, b = await operator(redis, "node-a"), await operator(redis, "node-b")
    (store_a, state_a), (store_b, state_b) = await moderated(a), await moderated(b)
    submitted: dict[int, float] = {}
    for n in range(100):
        submitted[n] = time.monotonic()
        await store_a.submit(order(n))
        # It fires once this node applied it.
        assert state_a.orders[-1] == order(n)
    deadline = time.monotonic() + 5
    while len(state_b.orders) < 100:
        assert time.monotonic() < deadline, len(state_b.orders)
        await sleep(0.05)
    assert state_a.orders == state_b.orders == [order(n) for n in range(100)]
    delays = sorted(state_b.applied_at[n] - submitted[n] for n in range(100))
    print(
        f"\norder propagation A->B over 100: median {delays[50] * 1000:.0f} ms, "
        f"worst {delays[-1] * 1000:.0f} ms"
    )
    # Orders from both nodes at once interleave in one order on both.
    await Deferred.fromCoroutine(_both_submit(store_a, store_b))
    deadline = time.monotonic() + 5
    while len(state_b.orders) < 140 or len(state_a.orders) < 140:
        assert time.monotonic() < deadline
        await sleep(0.05)
    assert state_a.orders == state_b.orders
    # A node started now loads the snapshot and the orders after it.
    c = await operator(redis, "node-c")
    store_c, state_c = await moderated(c)
    deadline = time.monotonic() + 5
    while state_c.orders != state_a.orders:
        assert time.monotonic() < deadline
        await sleep(0.05)
    for store, node in ((store_a, a), (store_b, b), (store_c, c)):
        await store.close()
        await node.close()


async def _both_submit(a: RedisModeration, b: RedisModeration) -> None:
    from twisted.internet.defer import gatherResults

    await gatherResults(
        [store.submit(order(1000 + i)) for i in range(20) for store in (a, b)]
    )


@pytest_twisted.ensureDeferred
async def test_a_node_behind_the_kept_orders_reloads_the_snapshot(redis):  # noqa: F811
    a, b = await operator(redis, "node-a"), await operator(redis, "node-b")
    store_a, state_a = await moderated(a)
    state_b = State({})
    store_b = RedisModeration(b.room, reactor, state_b.snapshot, state_b.restore)
    state_b.restore(await store_b.load())  # loaded, but not reading yet
    for n in range(5):
        await store_a.submit(order(n))
    # The stream keeps only the last order: B never read the first four.
    await redis_cli(redis, "XTRIM", "chatbox:moderation:orders", "MAXLEN", "1")
    store_b.start(state_b.apply)
    deadline = time.monotonic() + 5
    while state_b.orders != state_a.orders:
        assert time.monotonic() < deadline, state_b.orders
        await sleep(0.05)
    for store, node in ((store_a, a), (store_b, b)):
        await store.close()
        await node.close()


@pytest_twisted.ensureDeferred
async def test_orders_outlive_a_redis_restart(redis):  # noqa: F811
    a, b = await operator(redis, "node-a"), await operator(redis, "node-b")
    (store_a, state_a), (store_b, state_b) = await moderated(a), await moderated(b)
    acknowledged: list[int] = []
    doubtful: list[int] = []
    refused = 0
    state = {"after": 0, "restarted": False}

    async def outage() -> None:
        while len(acknowledged) < 20:
            await sleep(0.01)
        await redis.kill(signal.SIGKILL)
        await sleep(0.5)
        await redis.start()
        state["restarted"] = True

    restarting = Deferred.fromCoroutine(outage())
    n = 0
    # A submit out when Redis dies may wait through the outage (its order
    # was stored, and is applied once Redis is back): go on until 20 more
    # are acknowledged after the restart.
    while state["after"] < 20:
        state["after"] += state["restarted"]
        n += 1
        try:
            await store_a.submit(order(n))
            acknowledged.append(n)
        except RedisInDoubt:
            doubtful.append(n)
        except RoomError:
            refused += 1
            await sleep(0.05)
    await restarting
    deadline = time.monotonic() + 10
    while len(state_b.orders) < len(state_a.orders) or not state_a.orders:
        assert time.monotonic() < deadline
        await sleep(0.05)
    applied = [o["n"] for o in state_b.orders]
    assert [o["n"] for o in state_a.orders] == applied
    assert len(set(applied)) == len(applied)  # each once
    assert set(acknowledged) <= set(applied) <= set(acknowledged) | set(doubtful)
    print(f"\n{refused} submits refused and {len(doubtful)} in doubt during the outage")
    for store, node in ((store_a, a), (store_b, b)):
        await store.close()
        await node.close()


@pytest_twisted.ensureDeferred
async def test_the_stored_snapshot_only_moves_forward(redis):  # noqa: F811
    """SUBMIT from a node that has not applied the newest order appends its
    order but leaves the snapshot: a node loading it replays from there."""
    a = await operator(redis, "node-a")
    store, state = await moderated(a)
    for n in range(3):
        await store.submit(order(n))
    stored = await redis_cli(redis, "GET", "chatbox:moderation")
    newest = json.loads(stored)
    assert newest["state"] == {"orders": [order(0), order(1)]}
    assert newest["seen"] == 2
    commands = a.room.commands_for("")
    stale = json.dumps({"through": "0-0", "seen": 0, "state": {}})
    order_id, wrote = await commands.run(
        scripts.MODERATION_SUBMIT, json.dumps(order(3)), stale, "0-0", 10_000
    )
    assert wrote == 0 and order_id
    assert await redis_cli(redis, "GET", "chatbox:moderation") == stored
    deadline = time.monotonic() + 5
    while len(state.orders) < 4:
        assert time.monotonic() < deadline
        await sleep(0.05)
    assert state.orders == [order(n) for n in range(4)]
    await store.close()
    await a.close()


@pytest_twisted.ensureDeferred
async def test_a_deletion_in_a_named_room_reaches_its_followers_only(room_nodes, redis):  # noqa: F811
    """Room alpha's followers hear of its deletion through their bells; the
    default room, on the same nodes, hears nothing."""
    one, two = room_nodes
    alice = await room_user(one, "alpha", "Alice")
    bob = await room_user(two, "alpha", "Bob")
    lobby = await user(two, "Cy")
    lobby_too = await user(one, "Di")
    await lobby.event()  # Di joined
    await alice.event()  # Bob joined
    said = (await alice.say("secret-a1pha"))["id"]
    assert (await bob.event())["id"] == said
    op = await operator(redis)
    alpha = op.room.named("alpha")
    assert await alpha.follow(0)
    when = moment()
    assert await alpha.delete([said], when) == [said]
    for client in (alice, bob):
        assert await client.event() == messages.deleted([said], when)
    assert (await bob.get())["data"]["message"] == []
    assert await keys_holding(redis, b"secret-a1pha") == []
    # The default room's own message 1 is untouched, and its clients heard
    # nothing of alpha's deletion.
    await lobby.no_event_before(lobby_too)
    assert (await lobby.say("lobby"))["id"] == 2  # after the marker
    assert await alpha.delete([said], moment()) == []
    await alpha.close()
    await op.close()


# -- the whole path: chatbox-admin, the admin API, the Moderator, this store --


async def admin_node(tmp_path: Path, server: RedisServer, name: str):
    """A cluster node under twistd with its admin listener; its admin URL."""
    from tests.test_admin import ADMIN_LISTENING

    workdir = tmp_path / name
    workdir.mkdir()
    append_line(str(workdir / "admin-tokens"), hash_line("ops", TOKEN))
    node = await process.start(
        workdir,
        f"--redis={server.url}",
        f"--redis-lease={LEASE}",
        f"--admin-tokens={workdir / 'admin-tokens'}",
        "--admin-port=tcp:0:interface=127.0.0.1",
    )
    await node.wait_for(rb"joined the chat cluster")
    await node.wait_for(ADMIN_LISTENING)
    port = re.search(ADMIN_LISTENING, node.output).group(1).decode()
    return node, f"http://127.0.0.1:{port}"


async def admin(url: str, *args: str) -> Any:
    done = await run_cli(url, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest_twisted.ensureDeferred
async def test_an_operator_on_one_node_acts_on_every_node(tmp_path, redis):  # noqa: F811
    (one, url_one), (two, url_two) = [
        await admin_node(tmp_path, redis, f"node{i}") for i in (1, 2)
    ]
    try:
        spammer = await user(two, "Spammer")
        alice = await user(one, "Alice")
        await spammer.event()  # Alice joined
        said = (await spammer.say("buy now"))["id"]
        assert (await alice.event())["id"] == said

        # A deletion asked of node 1 reaches node 2's clients.
        deleted = await admin(url_one, "delete", str(said), "--reason", "spam")
        assert deleted["deleted"] == [said]
        for client in (alice, spammer):
            event = await client.event()
            assert (event["datatype"], event["ids"]) == ("delete", [said])
        assert (await spammer.get())["data"]["message"] == []

        # An announcement from node 1, with its marker, on node 2.
        await admin(url_one, "announce", "chào mọi người")
        for client in (alice, spammer):
            event = await client.event()
            assert (event["name"], event["announcement"]) == ("chatbox", True)

        # A ban made on node 1 closes the spammer's connection on node 2.
        started = time.monotonic()
        await admin(url_one, "ban", "name", "SPAMMER", "--reason", "spam")
        notice = await spammer.reply()
        assert (notice["type"], notice["action"]) == ("moderation", "ban")
        assert await spammer.close_code_from_server() == 4003
        print(f"\nban on node 1 -> close on node 2: {time.monotonic() - started:.3f} s")
        again = await connect(two.url)
        reply = await again.register("Ѕpammer")  # a Cyrillic Ѕ
        assert reply["reason"] == "NameAlreadyUsed" and reply["error"] == "banned"
        # Node 2 lists the ban made on node 1.
        assert [b["value"] for b in (await admin(url_two, "bans"))["bans"]] == [
            "SPAMMER"
        ]
    finally:
        for node in (one, two):
            await node.kill(signal.SIGTERM)
    # A node started afterwards enforces it from Redis.
    three, _ = await admin_node(tmp_path, redis, "node3")
    try:
        late = await connect(three.url)
        reply = await late.register("spammer")
        assert reply["reason"] == "NameAlreadyUsed" and reply["error"] == "banned"
    finally:
        await three.kill(signal.SIGTERM)
