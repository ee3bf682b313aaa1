"""Several chatbox nodes as one chat over a real redis-server.

Every node here is `twistd -n chatbox --redis ...` as a child process, and
Redis is a real redis-server child process, so kill -9 means kill -9.
"""

import json
import re
import signal
import socket
import sysconfig
import time
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue

from tests import process
from tests.client import connect, handshake_status
from tests.http import fetch, metric
from tests.redis_server import RedisServer

LEASE = 4.0  # seconds (--redis-lease)
# A dead node's names are freed within (0.6 + 1/6) × lease of its death,
# plus a script's time (chatbox/cluster/lease.py): 3.07 s here.
FREED_WITHIN = (0.6 + 1 / 6) * LEASE
# ...as seen by a client, on a loaded machine. Three steps can run late
# there, each by a scheduling delay: the victim's last renewal, the
# survivor's heartbeat that reaps it, and the leave's way to the watcher
# (stream read, WebSocket). On this 2-core machine with four busy loops
# beside the three nodes, Redis and the test, 8 runs took 1.99-2.72 s (idle:
# 1.81-2.39 s); 0.8 s allows over 250 ms for each late step, for a CI
# machine busier than that. A full-length lease instead of 0.6 × lease is
# caught for certain by the check of the lease Redis keeps (below), not by
# this bound; the beat interval is pinned by tests/unit/test_cluster_units.py.
FREED_MARGIN = 0.8
CHATBOX_REDIS = str(Path(sysconfig.get_path("scripts")) / "chatbox-redis")
STREAM_ID = re.compile(r"\d+-\d+")


async def start_node(tmp_path: Path, redis: RedisServer, name: str, *args: str):
    workdir = tmp_path / name
    workdir.mkdir()
    node = await process.start(
        workdir, f"--redis={redis.url}", f"--redis-lease={LEASE}", *args
    )
    await node.wait_for(rb"joined the chat cluster")
    return node


@pytest_twisted.async_yield_fixture
async def redis(tmp_path: Path):
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    await server.kill(signal.SIGTERM)


@pytest_twisted.async_yield_fixture
async def nodes(tmp_path: Path, redis: RedisServer):
    started = [await start_node(tmp_path, redis, f"node{i}") for i in (1, 2, 3)]
    yield started
    for node in started:
        await node.kill(signal.SIGTERM)


async def user(node, name: str):
    client = await connect(node.url)
    reply = await client.register(name)
    assert reply["status"] is True, reply
    return client


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def heard_before(client, marker: str) -> list[dict]:
    """Every event `client` got before the message `marker`. Events reach
    every client in one order, so if `marker` was said after whatever the
    test waits for, this is all that came first: a barrier, not a wait."""
    heard = []
    while True:
        event = await client.event()
        if event["datatype"] == "message" and event["content"] == marker:
            return heard
        heard.append(event)


async def settled(*clients) -> None:
    """Assert that no client has heard anything more: each in turn says a
    marker, and every other client's next event must be it (so neither an
    earlier event nor an echo of its own marker came first). The first
    speaks again last, so the last speaker's echo is checked too."""
    for turn, speaker in enumerate([*clients, clients[0]]):
        marker = f"marker {turn}"
        assert (await speaker.say(marker))["status"] is True
        for client in clients:
            if client is not speaker:
                assert await heard_before(client, marker) == [], marker


async def lease_expiry(redis: RedisServer, node_id: str) -> float:
    out, _, _ = await getProcessOutputAndValue(
        "redis-cli", ["-p", str(redis.port), "ZSCORE", "chatbox:nodes", node_id]
    )
    return float(out)


async def redis_time_ms(redis: RedisServer) -> float:
    """Redis' clock, which leases are kept in, in milliseconds."""
    out, _, _ = await getProcessOutputAndValue(
        "redis-cli", ["-p", str(redis.port), "TIME"]
    )
    seconds, microseconds = out.split()
    return int(seconds) * 1000 + int(microseconds) / 1000


async def heartbeats_since_now(redis: RedisServer, *nodes) -> None:
    """Wait until each node has run a heartbeat since this call: the lease
    expiry Redis keeps for it (in Redis' clock) has moved on. A reply from
    Redis after the heartbeat, not a guess at how long one takes."""
    ids = [(await health(node))[1]["node"] for node in nodes]
    before = [await lease_expiry(redis, node_id) for node_id in ids]
    deadline = time.monotonic() + LEASE
    for node_id, expiry in zip(ids, before, strict=True):
        while await lease_expiry(redis, node_id) <= expiry:
            assert time.monotonic() < deadline, f"node {node_id} stopped beating"
            await sleep(0.05)


async def health(node) -> tuple[int, dict]:
    code, _, body = await fetch(node, "/healthz")
    return code, json.loads(body)


@pytest_twisted.ensureDeferred
async def test_events_cross_nodes_once_each_in_order(nodes):
    one, two, three = nodes
    an = await user(one, "An")
    bo = await user(two, "Bo")
    joined = await an.event()
    assert (joined["type"], joined["datatype"], joined["name"]) == (
        "receive",
        "register",
        "Bo",
    )
    cy = await user(three, "Cy")
    for watcher in (an, bo):
        joined = await watcher.event()
        assert (joined["datatype"], joined["name"]) == ("register", "Cy")

    # 40 messages pipelined from one node arrive at the others in order.
    for i in range(40):
        an.send_json({"type": "send", "content": f"m{i}"})
    acks = [await an.reply() for _ in range(40)]
    assert all(ack["status"] for ack in acks)
    ids = [ack["id"] for ack in acks]
    assert ids == sorted(ids) and len(set(ids)) == 40
    for watcher in (bo, cy):
        got = [await watcher.event() for _ in range(40)]
        assert [(e["datatype"], e["content"], e["id"]) for e in got] == [
            ("message", f"m{i}", ids[i]) for i in range(40)
        ]

    assert (await bo.register("Bob"))["status"] is True
    for watcher in (an, cy):
        changed = await watcher.event()
        assert (changed["oldname"], changed["newname"]) == ("Bo", "Bob")
    bo.sendClose()
    for watcher in (an, cy):
        left = await watcher.event()
        assert (left["datatype"], left["name"]) == ("leave", "Bob")
    # Exactly once: nothing else arrives, and nobody hears their own events.
    await settled(an, cy)


@pytest_twisted.ensureDeferred
async def test_nickname_rules_hold_across_nodes(nodes, redis):
    one, two, _ = nodes
    an = await user(one, "Alice")
    bo = await connect(two.url)
    look_alikes = ("alice", "ALICE", "Ａlice", "Аlice", "Alice\u3164", " Alice\u034f")
    for variant in look_alikes:  # the 4th with a Cyrillic А
        reply = await bo.register(variant)
        assert reply["reason"] == "NameAlreadyUsed", (variant, reply)
    reply = await bo.register("\u3164\u2800")
    assert reply["reason"] == "WrongFormatName", reply
    assert (await bo.register("Bob"))["status"] is True
    for variant in look_alikes:
        reply = await bo.register(variant)
        assert (reply["action"], reply["reason"]) == ("change", "NameAlreadyUsed")
    # A variant of one's own name is a normal change, seen by the other node.
    assert (await an.register("ALICE"))["status"] is True
    assert (await bo.event())["newname"] == "ALICE"
    # Both keys of a name are held across nodes, and a rename frees both:
    # `Ivan` looks like `ivan` (another case) and like `lvan` (small L).
    assert (await an.register("Ivan"))["status"] is True
    assert (await bo.event())["newname"] == "Ivan"
    for variant in ("ivan", "lvan"):
        assert (await bo.register(variant))["reason"] == "NameAlreadyUsed"
    assert (await an.register("Alice"))["status"] is True
    # Exactly the keys of the names held now are left: none leak.
    assert redis_hash_fields(redis, b"chatbox:owner") == {
        b"alice",
        b"Alice",
        b"bob",
        b"Bob",
    }
    assert (await bo.register("lvan"))["status"] is True
    assert (await an.register("Ivan"))["reason"] == "NameAlreadyUsed"
    # Pipelined name then send: the send waits for the claim.
    cy = await connect(two.url)
    cy.send_json({"type": "name", "name": "Cy"})
    cy.send_json({"type": "send", "content": "first words"})
    assert (await cy.reply())["status"] is True
    assert (await cy.reply())["status"] is True


@pytest_twisted.ensureDeferred
async def test_requests_held_behind_a_name_are_answered_after_its_reply(
    tmp_path, redis
):
    """On a cluster node a `name` waits for Redis, and requests pipelined
    after it wait for its reply (PROTOCOL.md, ordering): even those answered
    at once when their turn comes must not overtake the `name` reply. The
    three frames are written together, so the node reads them before the
    claim's round trip can end."""
    node = await start_node(tmp_path, redis, "node")
    try:
        an = await connect(node.url)
        an.send_json({"type": "name", "name": "An"})
        an.send_json({"type": "get", "limit": 0})  # refused at once
        an.send_json({"type": "name", "name": "\u3164"})  # refused at once
        replies = [await an.reply() for _ in range(3)]
        assert [(r["type"], r.get("action"), r.get("reason")) for r in replies] == [
            ("name", "register", None),
            ("get", None, "WrongFormatArgument"),
            ("name", "change", "WrongFormatName"),
        ], replies
        assert replies[0]["status"] is True and replies[0]["name"] == "An"
    finally:
        await node.kill(signal.SIGTERM)


@pytest_twisted.ensureDeferred
async def test_same_get_on_every_node(nodes):
    clients = [await user(node, name) for node, name in zip(nodes, "ABC", strict=True)]
    for round_ in range(5):
        for client in clients:
            assert (await client.say(f"r{round_}"))["status"] is True
    answers = [await client.get() for client in clients]
    datas = [answer["data"] for answer in answers]
    assert datas[0] == datas[1] == datas[2]
    assert datas[0]["online"] == ["A", "B", "C"]  # registration order
    assert len(datas[0]["message"]) == 15
    ids = [m["id"] for m in datas[0]["message"]]
    assert ids == sorted(ids)
    pages = [await c.get(limit=4, before=ids[10], after=ids[2]) for c in clients]
    assert pages[0]["data"] == pages[1]["data"] == pages[2]["data"]
    assert [m["id"] for m in pages[0]["data"]["message"]] == ids[6:10]


@pytest_twisted.ensureDeferred
async def test_race_for_one_name_has_one_winner(nodes):
    variants = ["Racer", "racer", "RACER", "Ｒacer", "rAcEr"]
    watcher = await user(nodes[0], "Watcher")
    for round_ in range(3):
        clients = [
            await connect(node.url) for node in nodes for _ in range(8)
        ]  # 24 clients, 8 on each node
        for i, client in enumerate(clients):
            client.send_json({"type": "name", "name": variants[i % len(variants)]})
        replies = [await client.reply() for client in clients]
        winners = [r for r in replies if r["status"]]
        assert len(winners) == 1, (round_, replies)
        assert all(r["reason"] == "NameAlreadyUsed" for r in replies if not r["status"])
        joined = await watcher.event()
        assert (joined["datatype"], joined["name"]) == ("register", winners[0]["name"])
        for client in clients:
            client.sendClose()
        await DeferredList([ensureDeferred(c.wait_closed()) for c in clients])
        # The winner's leave is written by the script that frees the name:
        # once the watcher hears it, the next round races for a free name.
        left = await watcher.event()
        assert (left["datatype"], left["name"]) == ("leave", winners[0]["name"])


@pytest_twisted.ensureDeferred
async def test_killed_node_names_freed_and_left_once(nodes, redis):
    one, two, three = nodes
    watchers = [await user(one, "Watcher1"), await user(three, "Watcher3")]
    assert (await watchers[0].event())["name"] == "Watcher3"
    victims = [await user(two, name) for name in ("Cy", "Di")]
    for watcher in watchers:
        for _ in victims:
            assert (await watcher.event())["datatype"] == "register"

    # Redis set the victim's lease at its last renewal, which came before
    # `now`: however late that was, a lease is 0.6 × LEASE, not all of it.
    victim = (await health(two))[1]["node"]
    expiry = await lease_expiry(redis, victim)
    now = await redis_time_ms(redis)
    assert expiry - now <= 0.6 * LEASE * 1000, f"a lease of {expiry - now} ms"

    started = time.monotonic()
    await two.kill(signal.SIGKILL)
    for watcher in watchers:
        left = [await watcher.event(timeout=LEASE + 5) for _ in victims]
        assert sorted((e["datatype"], e["name"]) for e in left) == [
            ("leave", "Cy"),
            ("leave", "Di"),
        ]
    elapsed = time.monotonic() - started
    assert elapsed < FREED_WITHIN + FREED_MARGIN, f"names freed after {elapsed:.2f} s"
    # Two surviving nodes both reap: still one leave per name. Once each has
    # renewed its lease since (a heartbeat, which reaps first), any second
    # leave would be in the stream before the markers.
    await heartbeats_since_now(redis, one, three)
    await settled(*watchers)
    again = await user(one, "cy")
    assert (await again.get())["data"]["online"] == ["Watcher1", "Watcher3", "cy"]
    for victim in victims:
        await victim.wait_closed()


@pytest_twisted.ensureDeferred
async def test_node_that_outlived_its_lease_closes_its_clients(nodes):
    """A node frozen (or cut off) past its lease has had its names released
    and handed to others; when it wakes it must not let its clients chat on
    under them: they are closed with 1012 and may register again."""
    one, two, _ = nodes
    watcher = await user(one, "Watcher")
    frozen = await user(two, "Frozen")
    assert (await watcher.event())["name"] == "Frozen"
    two.transport.signalProcess(signal.SIGSTOP)
    try:
        left = await watcher.event(timeout=LEASE + 5)
        assert (left["datatype"], left["name"]) == ("leave", "Frozen")
        taker = await user(one, "frozen")  # the name is free for others now
    finally:
        two.transport.signalProcess(signal.SIGCONT)
    assert await frozen.close_code_from_server() == 1012
    await two.wait_for(rb"lost its lease")
    await two.wait_for(rb"joined the chat cluster", count=2)
    again = await connect(two.url)
    assert (await again.register("Frozen"))["reason"] == "NameAlreadyUsed"
    assert (await again.register("Thawed"))["status"] is True
    assert (await taker.event())["name"] == "Thawed"
    joins = [(await watcher.event())["name"] for _ in range(2)]
    assert joins == ["frozen", "Thawed"]
    await settled(watcher, taker, again)


def redis_commands(redis: RedisServer, *commands: bytes) -> None:
    """Send commands in one write, so Redis runs them back to back."""
    with socket.create_connection(("127.0.0.1", redis.port)) as connection:
        connection.sendall(b"".join(command + b"\r\n" for command in commands))
        connection.shutdown(socket.SHUT_WR)
        while connection.recv(4096):
            pass


@pytest_twisted.ensureDeferred
async def test_nickname_entries_of_an_older_chatbox_neither_block_nor_vanish(
    nodes, redis
):
    """An older chatbox kept one key per holder (NFKC + casefold), and a node
    of it could leave `owner` entries that no `held` entry lists (by
    releasing a newer node's holder the old way). Such an entry holds
    nothing; a holder it still lists keeps its name."""
    one, _, _ = nodes
    redis_commands(
        redis,
        b"HSET chatbox:owner bob gone:1",
        b"HSET chatbox:held old:1 alice",
        b"HSET chatbox:owner alice old:1",
    )
    assert (await (await connect(one.url)).register("ALICE"))["status"] is False
    bob = await user(one, "Bob")
    assert (await bob.register("Alice"))["reason"] == "NameAlreadyUsed"


def redis_hash_fields(redis: RedisServer, key: bytes) -> set[bytes]:
    """HKEYS, read straight off the wire (RESP: an array of bulk strings)."""
    with socket.create_connection(("127.0.0.1", redis.port)) as connection:
        connection.sendall(b"HKEYS " + key + b"\r\n")
        reply = connection.makefile("rb")
        count = int(reply.readline()[1:])
        fields = set()
        for _ in range(count):
            size = int(reply.readline()[1:])
            fields.add(reply.read(size + 2)[:-2])
        return fields


@pytest_twisted.ensureDeferred
async def test_node_that_missed_trimmed_events_has_clients_register_again(nodes, redis):
    one, _, _ = nodes
    an = await user(one, "An")
    # Every node is cut off, and the stream trimmed past where it was,
    # before any can reconnect: they have missed events and must say so.
    redis_commands(
        redis,
        b"CLIENT KILL TYPE normal SKIPME yes",
        b"XADD chatbox:events * k message",
        b"XTRIM chatbox:events MAXLEN 0",
    )
    assert await an.close_code_from_server() == 1012
    await one.wait_for(rb"missed events trimmed from the stream")
    await leave_in_stream(redis, "An")  # the old connection's release
    again = await user(one, "An")
    assert (await again.say("back"))["status"] is True


async def leave_in_stream(redis: RedisServer, name: str) -> None:
    """Wait for a leave of `name` in the cluster's event stream, read
    straight off Redis (XREAD BLOCK from the stream's start, which keeps it
    whenever it came): the script that frees a name writes its leave, so
    after it the name is free."""
    after = "0-0"
    while True:
        read = f"-p {redis.port} XREAD BLOCK 10000 STREAMS chatbox:events {after}"
        out, err, _ = await getProcessOutputAndValue("redis-cli", read.split())
        lines = out.decode().splitlines()[1:]  # after the stream's name
        assert lines and lines[0], f"no leave of {name} in the stream {err!r}"
        starts = [i for i, line in enumerate(lines) if STREAM_ID.fullmatch(line)]
        for start, end in zip(starts, [*starts[1:], len(lines)], strict=True):
            entry = lines[start + 1 : end]
            fields = dict(zip(entry[::2], entry[1::2], strict=True))
            if (fields.get("k"), fields.get("n")) == ("leave", name):
                return
        after = lines[starts[-1]]


@pytest_twisted.ensureDeferred
async def test_redis_restart_loses_no_acknowledged_message(nodes, redis):
    one, two, _ = nodes
    senders = [await user(one, "An"), await user(two, "Bo")]
    acked: dict[int, str] = {}
    refused: list[dict] = []
    state = {"restarted": False}

    async def chatter(client, who: str) -> None:
        after_restart = 0
        i = 0
        while after_restart < 30:
            i += 1
            reply = await client.say(f"{who}{i}")
            if reply["status"]:
                acked[reply["id"]] = reply["content"]
                after_restart += state["restarted"]
            else:
                refused.append(reply)
                await sleep(0.05)

    async def outage() -> None:
        while len(acked) < 60:
            await sleep(0.01)
        await redis.kill(signal.SIGKILL)
        await sleep(0.5)
        await redis.start()
        state["restarted"] = True

    await gatherResults(
        [
            ensureDeferred(chatter(senders[0], "an")),
            ensureDeferred(chatter(senders[1], "bo")),
            ensureDeferred(outage()),
        ]
    )
    assert refused, "the outage was never noticed"
    for reply in refused:
        assert reply["reason"] == "ErrorWhenSend" and reply["error"], reply
    for node in nodes:
        await until_healthy(node)
    histories = []  # what each sender's node says is stored
    for node, client in zip(nodes[:2], senders, strict=True):
        data = (await client.get())["data"]
        stored = {m["id"]: m["content"] for m in data["message"]}
        histories.append(stored)
        missing = set(acked) - set(stored)
        assert not missing, f"{node.url} lost acknowledged {sorted(missing)}"
        assert all(stored[i] == acked[i] for i in acked)
        assert list(stored) == sorted(stored)
        assert data["online"] == ["An", "Bo"]
    # The event stream outlived the restart: each message of the other sender
    # that the client's own node has stored reached the client once, in id
    # order, and no other message did: the other sender's marker, said after
    # them all, comes next. (Stored can be more than acknowledged: a send
    # whose reply was lost when Redis died is "in doubt" to its sender, and
    # may have been stored.)
    for client, history, speaker, other in zip(
        senders, histories, senders[::-1], ("bo", "an"), strict=True
    ):
        expected = sorted(i for i, text in history.items() if text.startswith(other))
        marker = f"{other}: that was all"
        assert (await speaker.say(marker))["status"] is True
        heard = await heard_before(client, marker)
        seen = [event["id"] for event in heard if event["datatype"] == "message"]
        assert seen == expected


async def until_healthy(node, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while (await health(node))[0] != 200:
        assert time.monotonic() < deadline, f"{node.url} did not recover"
        await sleep(0.1)


@pytest_twisted.ensureDeferred
async def test_node_serves_errors_until_redis_comes(tmp_path):
    redis = RedisServer(tmp_path)  # not started yet
    workdir = tmp_path / "node"
    workdir.mkdir()
    node = await process.start(workdir, f"--redis={redis.url}")
    try:
        code, body = await health(node)
        assert code == 503 and body["redis"] == "unavailable", body
        client = await connect(node.url)
        reply = await client.register("An")
        assert reply["reason"] == "ErrorWhenRegister" and reply["error"], reply
        await redis.start()
        await node.wait_for(rb"joined the chat cluster")
        assert (await client.register("An"))["status"] is True
        assert (await client.say("made it"))["id"] == 1
        code, body = await health(node)
        assert code == 200 and (body["redis"], body["lease"]) == ("ok", "held")
        _, _, metrics = await fetch(node, "/metrics")
        assert metric(metrics.decode(), "chatbox_registered_users") == 1
        assert metric(metrics.decode(), "chatbox_connections") == 1
    finally:
        await node.kill(signal.SIGTERM)
        await redis.kill()
    assert node.stopped_cleanly, node.output.decode()
    assert b"left the chat cluster" in node.output


@pytest_twisted.ensureDeferred
async def test_import_then_export_round_trip(tmp_path, redis):
    v2 = tmp_path / "data.json"
    stamp = "24/11/2026, 14:05:09"
    v2.write_text(
        json.dumps(
            [
                {"name": "An", "content": "xin chào", "timestamp": stamp},
                {"name": "Bo", "content": '"id":0 }', "timestamp": stamp},
            ],
            ensure_ascii=False,
        )
    )
    out, err, code = await getProcessOutputAndValue(
        CHATBOX_REDIS, ["import", "--redis", redis.url, str(v2)]
    )
    assert code == 0, err
    assert b"imported 2 messages" in out
    out, err, code = await getProcessOutputAndValue(
        CHATBOX_REDIS, ["import", "--redis", redis.url, str(v2)]
    )
    assert code == 1 and b"already has a history (2 messages)" in err

    node = await start_node(tmp_path, redis, "node")
    try:
        client = await user(node, "Cy")
        assert (await client.say("after import"))["id"] == 3
        messages = (await client.get())["data"]["message"]
        assert [(m["id"], m["content"]) for m in messages] == [
            (1, "xin chào"),
            (2, '"id":0 }'),
            (3, "after import"),
        ]
    finally:
        await node.kill(signal.SIGTERM)

    exported = tmp_path / "exported.json"
    out, err, code = await getProcessOutputAndValue(
        CHATBOX_REDIS, ["export", "--redis", redis.url, str(exported)]
    )
    assert code == 0, err
    assert json.loads(exported.read_text()) == messages
    out, err, code = await getProcessOutputAndValue(
        CHATBOX_REDIS, ["export", "--redis", redis.url, str(exported)]
    )
    assert code == 1 and b"--force" in err


async def redis_bytes_out(redis: RedisServer) -> int:
    out, _, _ = await getProcessOutputAndValue(
        "redis-cli", ["-p", str(redis.port), "INFO", "stats"]
    )
    for line in out.decode().splitlines():
        if line.startswith("total_net_output_bytes:"):
            return int(line.split(":")[1])
    raise AssertionError("no total_net_output_bytes in INFO stats")


@pytest_twisted.ensureDeferred
async def test_bare_get_at_real_size_fetches_only_what_it_returns(tmp_path, redis):
    """12,000 messages, the newest 2,000 of them 4,000 four-byte characters,
    and 1,000 people online
    (32 MB). A bare get returns the newest that fit in --max-get-bytes and
    pulls about that much from Redis, in slices, not the 10,000-entry cap;
    the classic client's bare get of 10,000 short messages, far past
    --max-message-size, arrives whole."""
    from tests.test_real_size import WIDE, prefill

    short = tmp_path / "short.json"
    prefill(short, 10_000)
    entries = json.loads(short.read_text())
    long_text = WIDE * 4000
    stamp = entries[0]["timestamp"]
    entries += [
        {"id": i, "name": "Dài", "content": long_text, "timestamp": stamp}
        for i in range(10_001, 12_001)
    ]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(entries, ensure_ascii=False))
    _, err, code = await getProcessOutputAndValue(
        CHATBOX_REDIS, ["import", "--redis", redis.url, str(data)]
    )
    assert code == 0, err
    crowd_ok = "--max-connections-per-ip=0"
    node = await start_node(
        tmp_path, redis, "node", "--max-get-bytes=4000000", crowd_ok
    )
    other = await start_node(tmp_path, redis, "other", crowd_ok)
    try:
        an = await user(node, "An")
        bo = await user(other, "Bo")
        await an.event()  # Bo joined
        before = await redis_bytes_out(redis)
        reply = await an.get()
        pulled = await redis_bytes_out(redis) - before
        got = reply["data"]["message"]
        assert got[-1]["id"] == 12_000 and got[-1]["content"] == long_text
        carried = sum(len(json.dumps(m, ensure_ascii=False).encode()) for m in got)
        assert 3_900_000 < carried <= 4_000_000
        assert pulled < 1.2 * carried  # today's main pulled all 10,000: 160 MB
        assert reply["data"]["online"] == ["An", "Bo"]
        # Paging back through the short part: 10,000 entries in one reply.
        page = await bo.get(before=10_001)
        assert [m["id"] for m in page["data"]["message"]] == list(range(1, 10_001))
        # Everyone else carried on meanwhile.
        assert (await bo.say("vẫn ở đây"))["id"] == 12_001

        # 1,000 people online across both nodes, with the longest names in a
        # 4-byte script: the online list alone is 400 KB, in every get.
        names = [WIDE * 96 + f"{i:04d}" for i in range(1000)]
        crowd = []
        for start in range(0, 1000, 100):
            batch = [
                await connect((node, other)[i % 2].url)
                for i in range(start, start + 100)
            ]
            for client, name in zip(batch, names[start:], strict=False):
                client.send_json({"type": "name", "name": name})
            for client in batch:
                assert (await client.reply())["status"] is True
                client.transport.pauseProducing()  # the kernel keeps their events
            crowd += batch
        online = (await an.get(limit=1))["data"]["online"]
        assert online[:2] == ["An", "Bo"] and sorted(online[2:]) == names
    finally:
        await node.kill(signal.SIGTERM)
        await other.kill(signal.SIGTERM)


@pytest_twisted.ensureDeferred
async def test_issue_12_extensions_across_nodes(nodes):
    """`time`, send_id, typing and the online count, cluster-wide: a retry
    on another node (the reply was lost, so its sender cannot know whether
    it was stored) gets the original and stores nothing."""
    one, two, _ = nodes
    stranger = await connect(two.url)
    an = await user(one, "An")
    bo = await user(two, "Bo")
    assert (await stranger.request({"type": "online"}))["count"] == 2
    await an.event()  # Bo joined

    first = await an.request({"type": "send", "content": "once", "send_id": "k1"})
    posted = await bo.event()
    assert posted["time"] == first["time"] and type(first["time"]) is int
    an.abort()
    assert (await bo.event())["datatype"] == "leave"
    again = await user(two, "An")
    assert (await bo.event())["datatype"] == "register"
    repeat = await again.request({"type": "send", "content": "twice", "send_id": "k1"})
    assert repeat == first

    again.send_json({"type": "typing"})
    typing = await bo.event()
    assert typing == {"type": "receive", "datatype": "typing", "name": "An"}
    history = (await bo.get())["data"]["message"]
    assert [(m["content"], m["time"]) for m in history] == [("once", first["time"])]
    await settled(bo, again)  # nothing else: no second "once", no echo


# -- rooms on a cluster (issue 13) --

ROOMS_OPEN = ("--rooms=open", "--listed-rooms=alpha,beta")


def room_url(node, room: str) -> str:
    return f"{node.url}/{room}"


async def room_user(node, room: str, name: str):
    client = await connect(room_url(node, room))
    reply = await client.register(name)
    assert reply["status"] is True, reply
    return client


async def redis_set(redis: RedisServer, key: str) -> set[str]:
    out, _, _ = await getProcessOutputAndValue(
        "redis-cli", ["-p", str(redis.port), "SMEMBERS", key]
    )
    return set(out.decode().split())


async def redis_int(redis: RedisServer, *command: str) -> int:
    out, _, _ = await getProcessOutputAndValue(
        "redis-cli", ["-p", str(redis.port), *command]
    )
    return int(out)


async def bell_rooms(redis: RedisServer, node_id: str) -> set[str]:
    """The streams a node's bell was rung for (chatbox.cluster.reader)."""
    out, _, _ = await getProcessOutputAndValue(
        "redis-cli",
        ["-p", str(redis.port), "XRANGE", f"chatbox:bell:{node_id}", "-", "+"],
    )
    lines = out.decode().split()
    return {lines[i + 1] for i, line in enumerate(lines) if line == "r"}


async def room_list(node) -> dict:
    code, _, body = await fetch(node, "/rooms")
    assert code == 200, body
    return json.loads(body)


async def same_room_list(*nodes, within: float = 5) -> dict:
    """GET /rooms on every node, once they agree (a node that has the room
    loaded answers its online count from a read at most a second old)."""
    deadline = time.monotonic() + within
    while True:
        lists = [await room_list(node) for node in nodes]
        if all(listed == lists[0] for listed in lists):
            return lists[0]
        assert time.monotonic() < deadline, lists
        await sleep(0.1)


@pytest_twisted.async_yield_fixture
async def room_nodes(tmp_path: Path, redis: RedisServer):
    started = [
        await start_node(tmp_path, redis, f"node{i}", *ROOMS_OPEN) for i in (1, 2)
    ]
    yield started
    for node in started:
        await node.kill(signal.SIGTERM)


@pytest_twisted.ensureDeferred
async def test_rooms_spread_across_two_nodes(room_nodes, redis):
    """Room alpha has users on both nodes, beta only on node 2: alpha is one
    chat across nodes (events, ARNS), beta's events never reach node 1,
    which does not even read beta's stream, and GET /rooms is the same on
    both nodes."""
    one, two = room_nodes
    alice = await room_user(one, "alpha", "Alice")
    bob = await room_user(two, "alpha", "Bob")
    assert (await alice.event())["name"] == "Bob"
    # One ARNS per room, across nodes: a look-alike of Alice is taken in
    # alpha on node 2, and Alice herself is free in beta and the default room.
    stranger = await connect(room_url(two, "alpha"))
    assert (await stranger.register("ALICE"))["reason"] == "NameAlreadyUsed"
    also_alice = await room_user(two, "beta", "Alice")
    cy = await room_user(two, "beta", "Cy")
    assert (await also_alice.event())["name"] == "Cy"
    lobby = [await user(one, "Alice"), await user(two, "Di")]
    assert (await lobby[0].event())["name"] == "Di"

    said = await cy.say("only in beta")
    heard = await also_alice.event()
    assert (heard["content"], heard["id"]) == ("only in beta", 1)
    for i in range(3):
        assert (await bob.say(f"alpha {i}"))["id"] == i + 1
        assert (await alice.event())["content"] == f"alpha {i}"
    last_alpha = (await alice.say("alpha done"))["time"]
    assert (await bob.event())["content"] == "alpha done"
    # Nothing of beta (or of alpha) reached alpha's or the default room's
    # clients beyond their own room's events.
    await settled(alice, bob)
    await settled(*lobby)
    await settled(also_alice, cy)
    assert (await alice.get())["data"]["online"] == ["Alice", "Bob"]
    assert [m["content"] for m in (await lobby[1].get())["data"]["message"]] == [
        f"marker {turn}" for turn in range(3)
    ]

    # Node 1 follows the default room and alpha only: it has not loaded
    # beta, reads two streams, and Redis lists it among alpha's followers,
    # not beta's.
    (_, first), (_, second) = await health(one), await health(two)
    assert (first["streams"], first["rooms"]["loaded"]) == (2, 2), first
    assert (second["streams"], second["rooms"]["loaded"]) == (3, 3), second
    assert await redis_set(redis, "chatbox:room:beta:followers") == {second["node"]}
    assert await redis_set(redis, "chatbox:room:alpha:followers") == {
        first["node"],
        second["node"],
    }
    assert await redis_set(redis, "chatbox:rooms") == {"alpha", "beta"}
    # Alpha's events rang both nodes' bells; beta's only node 2's.
    assert await bell_rooms(redis, first["node"]) == {"chatbox:room:alpha:events"}
    assert await bell_rooms(redis, second["node"]) == {
        "chatbox:room:alpha:events",
        "chatbox:room:beta:events",
    }

    # (settled's markers were the last messages in each room.)
    newest = [(await c.get())["data"]["message"][-1] for c in (alice, also_alice)]
    assert newest[0]["time"] > last_alpha and newest[1]["time"] > said["time"]
    listed = await same_room_list(one, two)
    assert listed == {
        "rooms": [
            {"name": "alpha", "online": 2, "last_activity": newest[0]["time"]},
            {"name": "beta", "online": 2, "last_activity": newest[1]["time"]},
        ]
    }

    # Listing beta on node 1 read beta's state from Redis, not its stream.
    assert (await health(one))[1]["streams"] == 2

    # A node that stops cleanly leaves every room it followed: its names
    # are released at once (with their leaves), and Redis forgets it.
    await two.kill(signal.SIGTERM)
    assert two.stopped_cleanly, two.output.decode()
    left = await alice.event()
    assert (left["datatype"], left["name"]) == ("leave", "Bob")
    assert await redis_set(redis, "chatbox:room:beta:followers") == set()
    assert await redis_set(redis, f"chatbox:following:{second['node']}") == set()
    assert await redis_int(redis, "EXISTS", f"chatbox:bell:{second['node']}") == 0
    assert await redis_set(redis, "chatbox:rooms") == {"alpha", "beta"}  # messages
    assert (await room_list(one))["rooms"][1] == {
        "name": "beta",
        "online": 0,
        "last_activity": newest[1]["time"],
    }


@pytest_twisted.ensureDeferred
async def test_killed_node_releases_its_names_in_every_room(room_nodes, redis):
    one, two = room_nodes
    rooms = ("", "alpha", "beta")
    watchers = [
        await room_user(one, room, f"Watcher{i}") for i, room in enumerate(rooms)
    ]
    for i, room in enumerate(rooms):
        await room_user(two, room, f"Victim{i}")
    for i, watcher in enumerate(watchers):
        assert (await watcher.event())["name"] == f"Victim{i}"
    victim_id = (await health(two))[1]["node"]
    assert await redis_set(redis, f"chatbox:following:{victim_id}") == {"alpha", "beta"}

    started = time.monotonic()
    await two.kill(signal.SIGKILL)
    for i, watcher in enumerate(watchers):
        left = await watcher.event(timeout=LEASE + 5)
        assert (left["datatype"], left["name"]) == ("leave", f"Victim{i}"), left
    elapsed = time.monotonic() - started
    assert elapsed < FREED_WITHIN + FREED_MARGIN, f"names freed after {elapsed:.2f} s"
    # Every room's name is free again, and the dead node is gone from every
    # room's bookkeeping.
    for i, room in enumerate(rooms):
        again = await room_user(one, room, f"victim{i}")
        assert (await watchers[i].event())["name"] == f"victim{i}"
        assert (await again.get())["data"]["online"] == [f"Watcher{i}", f"victim{i}"]
    assert await redis_set(redis, f"chatbox:following:{victim_id}") == set()
    for room in ("alpha", "beta"):
        followers = await redis_set(redis, f"chatbox:room:{room}:followers")
        assert victim_id not in followers


@pytest_twisted.ensureDeferred
async def test_max_rooms_is_counted_across_the_cluster(tmp_path, redis):
    """Two rooms at most, cluster-wide: each node has loaded one, and a third
    name is refused on both, though neither has reached the limit alone. A
    room that never held a message is forgotten once unloaded everywhere,
    which frees its place; one with a message keeps it."""
    args = ("--rooms=open", "--max-rooms=2", "--room-idle=0.5")
    one = await start_node(tmp_path, redis, "node1", *args)
    two = await start_node(tmp_path, redis, "node2", *args)
    try:
        quiet = await connect(room_url(one, "r1"))
        talker = await room_user(two, "r2", "An")
        assert (await talker.say("kept"))["status"] is True
        for node in (one, two):
            assert await handshake_status(node.port, "/r3") == 404
        assert await handshake_status(two.port, "/r1") == 101  # known: it may
        assert await redis_set(redis, "chatbox:rooms") == {"r1", "r2"}

        quiet.sendClose()
        await quiet.wait_closed()
        deadline = time.monotonic() + 10
        while await redis_set(redis, "chatbox:rooms") != {"r2"}:
            assert time.monotonic() < deadline, "r1 was not forgotten"
            await sleep(0.1)
        assert await redis_set(redis, "chatbox:room:r1:followers") == set()
        third = await room_user(one, "r3", "Bo")
        talker.sendClose()
        await talker.wait_closed()
        await sleep(2)  # r2 unloads on node 2: kept, with its message
        assert await redis_set(redis, "chatbox:rooms") == {"r2", "r3"}
        assert await handshake_status(one.port, "/r4") == 404
        assert (await third.say("still here"))["id"] == 1
    finally:
        await one.kill(signal.SIGTERM)
        await two.kill(signal.SIGTERM)


@pytest_twisted.ensureDeferred
async def test_import_then_export_a_named_room(tmp_path, redis):
    v2 = tmp_path / "class.json"
    stamp = "24/11/2026, 14:05:09"
    v2.write_text(
        json.dumps(
            [
                {"name": "An", "content": "bài tập", "timestamp": stamp},
                {"name": "Bo", "content": "ok", "timestamp": stamp},
            ],
            ensure_ascii=False,
        )
    )
    room = ["--room", "Class-7A", "--redis", redis.url]  # folded, as a path is
    out, err, code = await getProcessOutputAndValue(
        CHATBOX_REDIS, ["import", *room, str(v2)]
    )
    assert code == 0, err
    assert b"imported 2 messages" in out and b"room class-7a" in out
    _, err, code = await getProcessOutputAndValue(
        CHATBOX_REDIS, ["import", *room, str(v2)]
    )
    assert code == 1 and b"already has a history (2 messages)" in err
    _, err, code = await getProcessOutputAndValue(
        CHATBOX_REDIS, ["import", "--room", "rooms", "--redis", redis.url, str(v2)]
    )
    assert code == 2 and b"--room" in err  # reserved: never a room
    assert await redis_set(redis, "chatbox:rooms") == {"class-7a"}

    node = await start_node(tmp_path, redis, "node", "--rooms=class-7a")
    try:
        lobby = await user(node, "Cy")
        assert (await lobby.get())["data"]["message"] == []  # the default room's
        client = await room_user(node, "class-7a", "Cy")
        assert (await client.say("after import"))["id"] == 3
        messages = (await client.get())["data"]["message"]
        assert [(m["id"], m["content"]) for m in messages] == [
            (1, "bài tập"),
            (2, "ok"),
            (3, "after import"),
        ]
    finally:
        await node.kill(signal.SIGTERM)

    exported = tmp_path / "exported.json"
    _, err, code = await getProcessOutputAndValue(
        CHATBOX_REDIS, ["export", *room, str(exported)]
    )
    assert code == 0, err
    assert json.loads(exported.read_text()) == messages
    default = tmp_path / "default.json"
    _, err, code = await getProcessOutputAndValue(
        CHATBOX_REDIS, ["export", "--redis", redis.url, str(default)]
    )
    assert code == 0, err
    assert json.loads(default.read_text()) == []


@pytest_twisted.ensureDeferred
async def test_node_that_outlived_its_lease_follows_its_rooms_again(room_nodes, redis):
    """A node frozen past its lease had its names released in every room and
    was dropped from its rooms' followers (so its bell stopped ringing).
    Awake, it closes its clients in the named room too (1012), becomes a
    follower again, and its new clients there hear the room as before."""
    one, two = room_nodes
    watcher = await room_user(one, "alpha", "Watcher")
    frozen = await room_user(two, "alpha", "Frozen")
    assert (await watcher.event())["name"] == "Frozen"
    node_two = (await health(two))[1]["node"]
    two.transport.signalProcess(signal.SIGSTOP)
    try:
        left = await watcher.event(timeout=LEASE + 5)
        assert (left["datatype"], left["name"]) == ("leave", "Frozen")
        followers = await redis_set(redis, "chatbox:room:alpha:followers")
        assert node_two not in followers
        # Said while node 2 follows nothing: no bell of its rings for it.
        assert (await watcher.say("while you slept"))["status"] is True
    finally:
        two.transport.signalProcess(signal.SIGCONT)
    assert await frozen.close_code_from_server() == 1012
    await two.wait_for(rb"joined the chat cluster", count=2)
    deadline = time.monotonic() + LEASE
    while node_two not in await redis_set(redis, "chatbox:room:alpha:followers"):
        assert time.monotonic() < deadline, "node 2 did not follow alpha again"
        await sleep(0.05)
    again = await room_user(two, "alpha", "Thawed")
    assert (await watcher.event())["name"] == "Thawed"
    assert (await watcher.say("welcome back"))["status"] is True
    heard = await again.event()
    assert (heard["datatype"], heard["content"]) == ("message", "welcome back")
    messages = (await again.get())["data"]["message"]
    assert [m["content"] for m in messages] == ["while you slept", "welcome back"]
    await settled(watcher, again)
