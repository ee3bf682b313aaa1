"""The cluster backend's pure parts, without Redis: addresses, keys, entry
templates, options, and the room with its reader and lease driven through
their constructor seams by links whose replies the test fires."""

import re

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python import usage

from chatbox.chat.room import RoomError
from chatbox.cluster import scripts
from chatbox.cluster.address import RedisAddress, parse_redis_url
from chatbox.cluster.commands import Commands
from chatbox.cluster.keys import ROOM_FIELDS, STREAM_LENGTH, Keys
from chatbox.cluster.lease import Lease
from chatbox.cluster.link import RedisInDoubt, RedisUnavailable
from chatbox.cluster.reader import RETRY_SECONDS, EventReader
from chatbox.cluster.room import DELETE_BATCH, RedisRoom, entry_template
from chatbox.tap import Options
from chatbox.wire import codec, messages
from chatbox.wire.clock import Moment

T = Moment("24/11/2026, 14:05:09", 1795964709000)
LEFT = Moment("24/11/2026, 14:06:10", 1795964770123)  # a leave's own time


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6390/2", RedisAddress("127.0.0.1", 6390, 2)),
        ("redis://redis.internal", RedisAddress("redis.internal", 6379, 0)),
        (
            "redis://:s%40cret@10.0.0.5:7000/1",
            RedisAddress("10.0.0.5", 7000, 1, password="s@cret"),
        ),
        (
            "redis://chat:pw@host/0",
            RedisAddress("host", 6379, 0, password="pw", username="chat"),
        ),
        (
            "unix:///run/redis/redis.sock?db=3",
            RedisAddress(db=3, socket="/run/redis/redis.sock"),
        ),
    ],
)
def test_redis_urls(url, expected):
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://host:6379",
        "redis://",
        "redis://host:port/0",
        "redis://host/x",
        "unix://",
    ],
)
def test_bad_redis_urls(url):
    with pytest.raises(ValueError):
        parse_redis_url(url)


def test_address_never_shows_the_password():
    address = parse_redis_url("redis://:hunter2@db:6379/4")
    assert str(address) == "redis://db:6379/4"
    assert "hunter2" not in str(address)


@pytest.mark.parametrize(
    "content",
    ["plain", '"id":0', 'quote " and \\ backslash', "xin chào 🎉", "}{", "\u2028"],
)
def test_entry_template_matches_the_history_entry(content):
    for mark in (None, *messages.MARKS):
        head, tail = entry_template("Ａn", content, T, mark)
        for message_id in (1, 42, 10**12):
            entry = messages.history_entry(message_id, "Ａn", content, *T, mark)
            assert head + str(message_id).encode() + tail == codec.encode(entry)


def test_redis_options_are_checked():
    config = Options()
    config.parseOptions(["--redis", "redis://localhost:6379/1"])
    assert config["redis"] == RedisAddress("localhost", 6379, 1)
    for bad in (
        ["--redis", "localhost:6379"],
        ["--redis", "redis://localhost", "--redis-lease", "0.5"],
        ["--redis", "redis://localhost", "--redis-timeout", "0"],
    ):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(bad)


def test_the_default_room_keeps_the_keys_of_a_cluster_before_rooms():
    """An existing cluster's data (and `chatbox-redis` exports of it) must
    keep working: the default room's keys are exactly those of before."""
    keys = Keys.under()
    before = {
        field: f"chatbox:{field}"
        for field in [
            "owner",
            "held",
            "display",
            "online",
            "joinseq",
            "nodes",
            "msgid",
            "history",
            "events",
            "sends",
            "sendexp",
        ]
    }
    assert {field: getattr(keys, field) for field in before} == before
    # A node's holders were `<nodes>:<node id>`, and still are.
    assert keys.holders == "chatbox:nodes"
    assert Keys.for_room("") == keys


def test_a_named_room_has_its_own_keys_and_shares_the_clusters():
    room = Keys.for_room("class-7a")
    mine = {f for f in Keys._fields if getattr(room, f).startswith("chatbox:room:")}
    assert mine == {*ROOM_FIELDS, "named"}
    assert room.owner == "chatbox:room:class-7a:owner"
    assert room.events == "chatbox:room:class-7a:events"
    assert room.holders == "chatbox:room:class-7a:nodes"
    assert room.followers == "chatbox:room:class-7a:followers"
    # One lease table, one set of rooms, one per-node index, for every room.
    shared = ("nodes", "rooms", "following", "named", "bell")
    for field in shared:
        assert getattr(room, field) == getattr(Keys.under(), field)
    assert room.named == "chatbox:room:"
    # No two rooms share a key of their own (nor with the default room).
    other, default = Keys.for_room("class-7b"), Keys.under()
    for field in ROOM_FIELDS:
        assert getattr(room, field) not in (
            getattr(other, field),
            getattr(default, field),
        )
    # A room of a cluster under another prefix stays under that prefix.
    assert Keys.under("test:").room("class-7a") == Keys.for_room("class-7a", "test:")
    assert Keys.for_room("class-7a", "test:").owner == "test:room:class-7a:owner"
    # A room's prefix never reaches into the cluster's own keys.
    assert not any(k.startswith(Keys.under().rooms + ":") for k in room)


def test_lua_builds_a_rooms_keys_as_python_does():
    """Reaping a dead node reaches its named rooms through `use_room`, which
    builds their keys in Lua: the same names as Keys.for_room, or a dead
    node's names in a room would never be released."""
    body = scripts.HEARTBEAT.decode()
    body = body[body.index("local function use_room") : body.index("  else")]
    built = dict(re.findall(r"(\w+) = p \.\. '(\w+)'", body))
    assert set(built) == set(ROOM_FIELDS)
    prefix = "chatbox:room:class-7a:"
    room = Keys.for_room("class-7a")
    for field, suffix in built.items():
        assert getattr(room, field) == prefix + suffix, field
    assert "local p = named .. name .. ':'" in body


def test_keys_are_the_scripts_locals_in_order():
    """Scripts read KEYS by position into named locals; Python passes Keys'
    fields in order. The two lists must be one list."""
    preamble = re.search(rb"local ([a-z,\s]+) =\s+KEYS\[1\]", scripts.CLAIM)
    assert preamble is not None
    locals_ = preamble.group(1).decode().replace(",", " ").split()
    assert tuple(locals_) == Keys._fields
    keys = Keys.under("test:")
    assert (keys.owner, keys.events) == ("test:owner", "test:events")


class FakeLink:
    """Stands in for RedisLink: every command waits for the test to fire
    its reply."""

    address = RedisAddress()

    def __init__(self) -> None:
        self.up = True
        self.evals: list[tuple[bytes, list, Deferred]] = []
        self.reads: list[Deferred] = []
        self.read_args: list[tuple] = []
        self.eval_keys: list[list] = []
        self._on_up: list = []

    def on_up(self, callback) -> None:
        self._on_up.append(callback)

    def reconnected(self) -> None:
        for callback in self._on_up:
            callback()

    def start(self) -> None:
        pass

    def stop(self) -> Deferred:
        return succeed(None)

    def eval(self, script: bytes, keys, args) -> Deferred:
        reply: Deferred = Deferred()
        self.evals.append((script, list(args), reply))
        self.eval_keys.append(list(keys))
        return reply

    def execute(self, *args) -> Deferred:
        assert args[0] == "XREAD", args
        reply: Deferred = Deferred()
        self.reads.append(reply)
        self.read_args.append(args)
        return reply

    def pending(self, script: bytes) -> tuple[list, Deferred]:
        """The oldest unanswered call of `script`: its arguments and reply."""
        for called, args, reply in self.evals:
            if called == script and not reply.called:
                return args, reply
        raise AssertionError("no such call waits for a reply")

    def stream(
        self, *entries: tuple[bytes, list[bytes]], key: bytes = b"chatbox:events"
    ) -> None:
        """Answer the XREAD that waits with `entries` of stream `key`."""
        waiting = [read for read in self.reads if not read.called]
        assert len(waiting) == 1, "the reader is not waiting for events"
        waiting[0].callback([[key, list(entries)]])

    def streams_read(self) -> list[bytes]:
        """The streams the XREAD waiting now names (STREAMS k1 k2 id1 id2)."""
        args = self.read_args[-1]
        named = args[args.index("STREAMS") + 1 :]
        return list(named[: len(named) // 2])


class Node:
    """A RedisRoom of node n1, leased and reading from the stream's start,
    with every collaborator the real one over fake links."""

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.commands_link, self.reader_link = FakeLink(), FakeLink()
        keys = Keys.under()
        commands = Commands(self.commands_link, keys)
        self.reader = EventReader(self.reader_link, keys, self.clock)
        self.reader.listen_to("n1")
        self.lease = Lease(commands, self.clock, "n1")
        self.room = RedisRoom(commands, self.reader, self.lease, self.clock)
        self.delivered: list[tuple[dict, object]] = []
        self.lost: list[list] = []
        self.room.attach(
            lambda event, exclude: self.delivered.append((event, exclude)),
            self.lost.append,
        )
        self.room.start()
        self.beat(held=True)
        _, state = self.reader_link.pending(scripts.STREAM_STATE)
        state.callback([[b"0-0", 0, 0, b"0-0", b"0-0", 0]])
        assert self.room.ready

    def beat(self, held: bool, messages: int = 0) -> None:
        self.lease.beat()
        _, reply = self.commands_link.pending(scripts.HEARTBEAT)
        reply.callback([int(held), 0, messages])


def _entry(entry_id: bytes, **fields: str) -> tuple[bytes, list[bytes]]:
    flat = [part.encode() for pair in fields.items() for part in pair]
    return entry_id, flat


def test_stream_waits_for_the_reply_of_a_claim_it_overtook():
    """The reader reaches An's register event before the claim's reply: An
    must get its reply first, then every later event, and nothing earlier."""
    node = Node()
    room = node.room
    an = object()
    order: list[str] = []
    room.claim(an, "An", T).addCallback(lambda _: order.append("reply"))

    node.reader_link.stream(
        _entry(b"1-0", k="register", o="n2:7", n="Bo", t="t"),
        _entry(b"2-0", k="register", o="n1:1", n="An", t="t"),
        _entry(b"3-0", k="message", o="n2:7", n="Bo", c="hi", t="t", id="1"),
    )
    assert [e["name"] for e, _ in node.delivered] == ["Bo"]
    assert list(room.audience()) == []

    _, reply = node.commands_link.pending(scripts.CLAIM)
    reply.callback(b"2-0")
    assert order == ["reply"] and room.name_of(an) == "An"
    node.clock.advance(0)
    assert [(e["datatype"], x) for e, x in node.delivered] == [
        ("register", None),
        ("register", an),  # An's own event: not to An
        ("message", None),
    ]
    assert list(room.audience()) == [an]
    assert room.message_count() == 1
    assert len(node.reader_link.reads) == 2  # reading on past the batch


def test_claim_reply_before_the_stream_joins_at_its_own_event():
    node = Node()
    room = node.room
    an = object()
    room.claim(an, "An", T)
    node.commands_link.pending(scripts.CLAIM)[1].callback(b"5-0")
    assert room.name_of(an) == "An" and list(room.audience()) == []
    node.reader_link.stream(_entry(b"4-0", k="register", o="n2:1", n="Bo", t="t"))
    assert list(room.audience()) == []  # an event from before An's claim
    node.reader_link.stream(_entry(b"5-0", k="register", o="n1:1", n="An", t="t"))
    assert list(room.audience()) == [an]


def test_lost_lease_closes_registered_clients_and_seeks_the_lease_again():
    """Redis released this node's names when its lease ran out: its clients
    must register again, and the node asks for a lease at once, not at the
    next heartbeat."""
    node = Node()
    room = node.room
    an = object()
    room.claim(an, "An", T)
    node.commands_link.pending(scripts.CLAIM)[1].callback(b"1-0")
    node.beat(held=False, messages=7)
    assert node.lost == [[an]]
    assert room.name_of(an) is None and room.registered_count() == 0
    assert not room.ready and room.health()["lease"] == "none"
    assert room.message_count() == 7
    node.clock.advance(0)
    args, reply = node.commands_link.pending(scripts.HEARTBEAT)
    assert args[0] == "n1" and args[-1] == "1"  # joining again
    reply.callback([1, 0, 7])
    assert room.ready and room.health()["lease"] == "held"


def test_reader_that_missed_trimmed_events_has_clients_register_again():
    """Back from a dropped connection, the reader finds that more events
    were added than the stream still keeps since it last read: its
    clients' view has a hole, so they must register again."""
    node = Node()
    room = node.room
    an = object()
    room.claim(an, "An", T)
    node.commands_link.pending(scripts.CLAIM)[1].callback(b"1-0")
    node.reader_link.stream(_entry(b"1-0", k="register", o="n1:1", n="An", t="t"))
    node.reader_link.reads[-1].errback(RedisInDoubt("redis connection lost"))
    node.reader_link.reconnected()
    node.clock.advance(RETRY_SECONDS)
    _, state = node.reader_link.pending(scripts.STREAM_STATE)
    # 8 added since, 7 kept, the oldest after 1-0: one trimmed unread
    state.callback([[b"9-0", 9, 7, b"3-0", b"0-0"]])
    assert node.lost == [[an]]


def test_reader_back_without_a_gap_reads_on():
    node = Node()
    node.reader_link.stream(_entry(b"1-0", k="register", o="n2:1", n="Bo", t="t"))
    node.reader_link.reads[-1].errback(RedisInDoubt("redis connection lost"))
    node.reader_link.reconnected()
    node.clock.advance(RETRY_SECONDS)
    _, state = node.reader_link.pending(scripts.STREAM_STATE)
    state.callback([[b"9-0", 9, 8, b"2-0", b"0-0"]])  # 8 added since, all 8 kept
    assert node.lost == []
    node.reader_link.stream(_entry(b"2-0", k="leave", o="n2:1", n="Bo", t="t"))
    assert [e["datatype"] for e, _ in node.delivered] == ["register", "leave"]


def _back_after_an_outage(state: list) -> Node:
    """A node that read up to 1-0 (entries-added 1), lost its reader's
    connection and found the stream in `state` (STREAM_STATE's answer)."""
    node = Node()
    node.room.claim(object(), "An", T)
    node.commands_link.pending(scripts.CLAIM)[1].callback(b"1-0")
    node.reader_link.stream(_entry(b"1-0", k="register", o="n1:1", n="An", t="t"))
    node.reader_link.reads[-1].errback(RedisInDoubt("redis connection lost"))
    node.reader_link.reconnected()
    node.clock.advance(RETRY_SECONDS)
    _, reply = node.reader_link.pending(scripts.STREAM_STATE)
    reply.callback([state])
    return node


def test_deleted_entries_are_not_taken_for_trimmed_ones():
    """An operator's deletion removes stream entries (XDEL) without
    trimming: 8 added since the reader's place and only 2 kept is no hole
    while an entry at or before its place still stands (trimming takes the
    oldest first)."""
    assert _back_after_an_outage([b"9-0", 9, 3, b"1-0", b"8-0"]).lost == []
    # With nothing before its place left and entries deleted after it, the
    # count cannot tell a trimmed entry from a deleted one: assume the worst.
    assert len(_back_after_an_outage([b"9-0", 9, 2, b"5-0", b"8-0"]).lost) == 1
    # Deleted only before its place: the count tells, and says no hole.
    assert _back_after_an_outage([b"9-0", 9, 8, b"2-0", b"1-0"]).lost == []


def test_entries_the_purge_removed_past_the_readers_place_are_no_hole():
    """The retention purge XDELs every expired message entry, those the
    reader had not read too (a burst past a count limit while the reader
    was away). The scripts count what XDEL removed: if nothing was trimmed
    since the reader last looked, its clients saw no hole."""
    # 8 added since, 2 kept, none at or before its place: 6 XDELed (the
    # counted total of 7 includes one from before), none trimmed.
    assert _back_after_an_outage([b"9-0", 9, 2, b"5-0", b"8-0", 7]).lost == []
    # One more added than kept or XDELed: trimmed, and maybe unread.
    assert len(_back_after_an_outage([b"9-0", 9, 2, b"5-0", b"8-0", 6]).lost) == 1
    # Trimmed since, but only entries it had read: the old rule still tells.
    assert _back_after_an_outage([b"9-0", 9, 3, b"1-0", b"8-0", 0]).lost == []


def test_an_event_of_unknown_kind_is_skipped_not_taken_for_a_leave():
    """A newer node may write an event kind this one does not know (a
    rolling upgrade): it is skipped with a log line, and the events around
    it are delivered as usual."""
    node = Node()
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        node.reader_link.stream(
            _entry(b"1-0", k="register", o="n2:7", n="Bo", t="t"),
            _entry(b"2-0", k="pin", o="n2:7", n="Bo", t="t", id="1"),
            _entry(b"3-0", k="leave", o="n2:7", n="Bo", t="t"),
        )
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert [e["datatype"] for e, _ in node.delivered] == ["register", "leave"]
    assert any("unknown kind" in event.get("log_format", "") for event in logged)


def _registered(node: Node, name: str = "An") -> object:
    """A connection of node n1 that holds `name` (as holder n1:1...)."""
    owner = object()
    node.room.claim(owner, name, T)
    node.commands_link.pending(scripts.CLAIM)[1].callback(b"1-0")
    assert node.room.name_of(owner) == name
    return owner


def _releases(link: FakeLink) -> list[list]:
    return [args for script, args, _ in link.evals if script == scripts.RELEASE]


@pytest.mark.parametrize(
    "outage",
    [RedisUnavailable("redis is down"), RedisInDoubt("redis connection lost")],
)
def test_release_that_failed_is_sent_again_at_the_next_heartbeat(outage):
    """A connection closed while Redis was failing: its name must not stay
    taken until the node's lease runs out (or for ever, while the node
    lives). The heartbeat retries the release, with the leave's own time."""
    node = Node()
    an = _registered(node)
    assert node.room.release(an, LEFT) == "An"
    args, reply = node.commands_link.pending(scripts.RELEASE)
    assert args[:4] == ["n1", "n1:1", *LEFT]
    reply.errback(outage)
    assert len(_releases(node.commands_link)) == 1  # no busy retry loop

    node.beat(held=True)
    retried = _releases(node.commands_link)
    assert retried == [args, args], "the heartbeat did not retry the release"
    node.commands_link.pending(scripts.RELEASE)[1].callback(1)
    node.beat(held=True)  # confirmed now: never sent again
    assert len(_releases(node.commands_link)) == 2


def test_release_while_redis_is_down_is_sent_when_the_link_is_back():
    """While the link is down nothing is sent; the link coming back starts a
    heartbeat (the lease's on_up), whose answer sends the release."""
    node = Node()
    an = _registered(node)
    node.commands_link.up = False
    node.room.release(an, LEFT)
    assert _releases(node.commands_link) == []
    node.commands_link.up = True
    node.commands_link.reconnected()
    assert _releases(node.commands_link) == []  # after the lease, not before
    _, heartbeat = node.commands_link.pending(scripts.HEARTBEAT)
    heartbeat.callback([1, 0, 0])
    sent = [args[:4] for args in _releases(node.commands_link)]
    assert sent == [["n1", "n1:1", *LEFT]], "the release was not retried"


@pytest.mark.parametrize(
    ("seconds", "every", "lease_ms"), [(15, 2.5, 9000), (30, 5, 18000)]
)
def test_lease_is_renewed_every_sixth_of_it_for_six_tenths_of_it(
    seconds, every, lease_ms
):
    """lease.py's promise: a node renews every lease/6 for 0.6 × lease, so
    its names are freed within (0.6 + 1/6) × lease of its death, and it
    survives two missed renewals (the third comes at half the lease).
    (Leases whose sixth is exact in binary, so the fake clock lands on each
    beat exactly.)"""
    clock = MemoryReactorClock()
    link = FakeLink()
    lease = Lease(Commands(link, Keys.under()), clock, "n1", seconds)
    lease.start()

    def heartbeats() -> list[list]:
        return [args for script, args, _ in link.evals if script == scripts.HEARTBEAT]

    for beat in range(1, 4):
        clock.advance(every - 1 / 64)
        assert len(heartbeats()) == beat - 1, f"beat {beat} came early"
        clock.advance(1 / 64)
        assert len(heartbeats()) == beat, f"beat {beat} did not come"
        args, reply = link.pending(scripts.HEARTBEAT)
        assert args[:2] == ["n1", lease_ms]  # the lease Redis sets, in ms
        reply.callback([1, 0, 0])
    assert lease.held


def test_the_online_count_is_one_script_a_second_however_many_ask():
    """Connections that have not joined can ask by the thousand; Redis is
    asked at most once a second per node, and a failure reaches them all."""
    node = Node()
    results: list[object] = []
    for _ in range(100):
        node.room.online_count().addBoth(results.append)
    asked = _count_scripts(node)
    assert len(asked) == 1
    asked[0][2].callback(7)
    assert results == [7] * 100
    node.room.online_count().addBoth(results.append)
    assert results[-1] == 7 and len(_count_scripts(node)) == 1  # from the cache
    node.clock.advance(1.0)
    node.room.online_count().addBoth(results.append)
    _, reply = node.commands_link.pending(scripts.ONLINE_COUNT)
    reply.errback(RedisUnavailable("redis is down"))
    assert results[-1].check(RoomError)


def _count_scripts(node: Node) -> list:
    return [e for e in node.commands_link.evals if e[0] == scripts.ONLINE_COUNT]


def test_every_stream_entry_carries_a_time():
    """Nodes of the release before typing hints read `t` of every entry
    before its kind, so an entry without one (a hint, say) gave them a
    traceback per entry during a rolling upgrade."""
    source = b"".join(
        getattr(scripts, name) for name in scripts.__all__ if name.isupper()
    ).decode()
    emits = [f for f in re.findall(r"emit\(maxlen, ([^)]*)\)", source) if f != "..."]
    assert len(emits) >= 7
    for fields in emits:
        assert "'t', ts, 'ms', ms" in " ".join(fields.split()), fields


# -- rooms: one node, several rooms --

ALPHA = Keys.for_room("alpha")


class Named:
    """Named room `name` of a Node, followed from `last` (its stream's end
    when FOLLOW ran), with what it delivers and loses recorded."""

    def __init__(self, node: Node, name: str = "alpha", last: bytes = b"5-0") -> None:
        self.room = node.room.named(name)
        self.delivered: list[tuple[dict, object]] = []
        self.lost: list[list] = []
        self.room.attach(
            lambda event, exclude: self.delivered.append((event, exclude)),
            self.lost.append,
        )
        followed: list[object] = []
        self.room.follow(0).addBoth(followed.append)
        args, reply = node.commands_link.pending(scripts.FOLLOW)
        assert args == ["n1", name, 0]
        assert node.commands_link.eval_keys[-1] == list(Keys.for_room(name))
        reply.callback([last, 5, 3, 1795964709000, 0])
        assert followed == [True]
        assert self.room.ready and self.room.message_count() == 3
        assert self.room.last_activity() == 1795964709000


def _reads_from(link: FakeLink) -> dict[bytes, bytes]:
    """Each stream the waiting XREAD names, with the id it reads after."""
    args = link.read_args[-1]
    named = args[args.index("STREAMS") + 1 :]
    half = len(named) // 2
    return {
        (k if isinstance(k, bytes) else k.encode()): v
        for k, v in zip(named[:half], named[half:], strict=True)
    }


BELL = b"chatbox:bell:n1"


def _blocking(link: FakeLink) -> bool:
    return "BLOCK" in link.read_args[-1]


def _ring(node: Node, *news: bytes) -> None:
    """Ring n1's bell once for each stream of `news`."""
    first = len(node.reader_link.reads) * 10
    node.reader_link.stream(
        *[(b"%d-0" % (first + i), [b"r", stream]) for i, stream in enumerate(news)],
        key=BELL,
    )


def test_the_reader_blocks_on_two_streams_and_reads_rooms_on_news():
    """However many rooms a node has loaded, its blocking XREAD names the
    default room's stream and its bell only; a named room is read when the
    bell brings news of it (and once when it is loaded), each from its own
    place, and its events go to that room alone."""
    node = Node()
    assert _reads_from(node.reader_link) == {b"chatbox:events": b"0-0", BELL: b"0-0"}
    alpha = Named(node)
    Named(node, "beta", last=b"2-0")
    node.reader_link.stream(_entry(b"1-0", k="register", o="n2:1", n="Bo", t="t"))
    # Loaded: read once at once, without blocking.
    assert not _blocking(node.reader_link)
    assert _reads_from(node.reader_link) == {
        b"chatbox:events": b"1-0",
        BELL: b"0-0",
        ALPHA.events.encode(): b"5-0",
        b"chatbox:room:beta:events": b"2-0",
    }
    node.reader_link.stream(
        _entry(b"6-0", k="register", o="n2:2", n="Cy", t="t"),
        key=ALPHA.events.encode(),
    )
    assert [e["name"] for e, _ in alpha.delivered] == ["Cy"]
    # Then blocking again on the default room and the bell alone.
    assert _blocking(node.reader_link)
    assert set(_reads_from(node.reader_link)) == {b"chatbox:events", BELL}
    assert node.room.health()["streams"] == 3  # the bell is no room's

    _ring(node, ALPHA.events.encode())
    assert not _blocking(node.reader_link)
    reading = _reads_from(node.reader_link)
    assert reading[ALPHA.events.encode()] == b"6-0"
    assert b"chatbox:room:beta:events" not in reading  # no news of beta
    node.reader_link.stream(
        _entry(b"7-0", k="message", o="n2:2", n="Cy", c="hi", t="t", id="4"),
        key=ALPHA.events.encode(),
    )
    assert [e["name"] for e, _ in alpha.delivered] == ["Cy", "Cy"]
    assert [e["name"] for e, _ in node.delivered] == ["Bo"]  # nothing of alpha
    assert alpha.room.message_count() == 4 and node.room.message_count() == 0
    assert _blocking(node.reader_link)


def test_a_ring_read_but_not_followed_by_its_read_is_read_again():
    """The bell rang and the ring was read, but the read of the room failed
    (Redis went away): the reader is past the ring, so it must read every
    named room again once back, or the room's events would wait for its
    next one."""
    node = Node()
    alpha = Named(node)
    node.reader_link.stream()  # the blocking read comes back empty
    node.reader_link.stream()  # alpha's first read: nothing yet
    _ring(node, ALPHA.events.encode())
    node.reader_link.reads[-1].errback(RedisInDoubt("redis connection lost"))
    node.clock.advance(RETRY_SECONDS)
    assert ALPHA.events.encode() in _reads_from(node.reader_link)
    node.reader_link.stream(
        _entry(b"6-0", k="register", o="n2:2", n="Cy", t="t"),
        key=ALPHA.events.encode(),
    )
    assert [e["name"] for e, _ in alpha.delivered] == ["Cy"]


def test_an_unloaded_room_is_read_no_more():
    """Unloading a room stops reading its stream at once (what an XREAD
    already out brings of it is dropped), and tells Redis the node no longer
    follows it."""
    node = Node()
    alpha = Named(node)
    node.reader_link.stream(_entry(b"1-0", k="register", o="n2:1", n="Bo", t="t"))
    closed: list[object] = []
    alpha.room.close().addBoth(closed.append)
    args, reply = node.commands_link.pending(scripts.UNFOLLOW)
    assert args[:2] == ["n1", "alpha"]
    node.reader_link.stream(
        _entry(b"6-0", k="register", o="n2:2", n="Cy", t="t"), key=ALPHA.events.encode()
    )
    assert alpha.delivered == []
    _ring(node, ALPHA.events.encode())  # news of it, too late: not read
    assert ALPHA.events.encode() not in _reads_from(node.reader_link)
    assert _blocking(node.reader_link)
    reply.callback([0, 1])
    assert closed == [True] and alpha.room.forgotten
    assert node.room.health()["streams"] == 1
    # The node's lease no longer reports to the unloaded room.
    node.beat(held=False)
    assert alpha.lost == []


def test_a_lost_lease_closes_every_rooms_clients_and_rooms_follow_again():
    """Redis released the node's names in every room: each room closes its
    registered clients, and once the lease is back each named room records
    itself as a follower again (its reaper had removed it)."""
    node = Node()
    alpha = Named(node)
    an, bo = object(), object()
    node.room.claim(an, "An", T)
    node.commands_link.pending(scripts.CLAIM)[1].callback(b"1-0")
    alpha.room.claim(bo, "Bo", T)
    args, reply = node.commands_link.pending(scripts.CLAIM)
    assert args[-2] == "alpha"  # a claim in a named room re-follows it too
    reply.callback(b"6-0")
    node.beat(held=False)
    assert node.lost == [[an]] and alpha.lost == [[bo]]
    assert alpha.room.registered_count() == 0
    node.clock.advance(0)
    _, heartbeat = node.commands_link.pending(scripts.HEARTBEAT)
    heartbeat.callback([1, 0, 0])
    args, reply = node.commands_link.pending(scripts.FOLLOW)
    assert args == ["n1", "alpha", 0]  # no limit: the room was counted
    # Events while it was no follower rang no bell: it is read anyway.
    node.reader_link.stream()  # the blocking read returns
    node.reader_link.stream()  # the first read of alpha
    assert _blocking(node.reader_link)
    reply.callback([b"9-0", 9, 3, -1, 0])
    node.reader_link.stream()  # the blocking read returns (or times out)
    assert ALPHA.events.encode() in _reads_from(node.reader_link)


def test_the_cluster_room_limit_refuses_with_404():
    from chatbox.chat.rooms import RoomRefused
    from chatbox.cluster.rooms import RedisRooms

    node = Node()
    maker = RedisRooms(node.room, node.clock, most=2)
    made: list[object] = []
    maker.make("alpha").addBoth(made.append)
    args, reply = node.commands_link.pending(scripts.FOLLOW)
    assert args == ["n1", "alpha", 2]
    reply.callback(0)
    assert made[0].check(RoomRefused)
    assert made[0].value.status == 404 and "limit" in str(made[0].value)
    assert node.room.health()["streams"] == 1  # not followed
    assert len(node.lease._watchers) == 1  # nor kept: a refusal costs nothing

    summary: list[object] = []
    maker.summary("beta").addBoth(summary.append)
    _, reply = node.commands_link.pending(scripts.ROOM_SUMMARY)
    assert node.commands_link.eval_keys[-1] == list(Keys.for_room("beta"))
    reply.callback([3, -1])
    assert summary == [(3, None)]


# -- moderation: deletions and announcements in the stream --


def test_deletions_and_announcements_from_the_stream():
    """A delete event becomes `messages.deleted` for every connection (no
    origin) and sets the message count; an announcement keeps its marker."""
    node = Node()
    node.beat(held=True, messages=40)
    node.reader_link.stream(
        _entry(b"1-0", k="message", o="", n="chatbox", c="hi", t=T.text,
               ms=str(T.millis), id="41", a="1"),
        _entry(b"2-0", k="delete", o="", n="", ids="7,41", count="39",
               last=str(LEFT.millis), t=LEFT.text, ms=str(LEFT.millis)),
    )  # fmt: skip
    assert node.delivered == [
        (messages.posted("chatbox", "hi", T, 41, "announcement"), None),
        (messages.deleted([7, 41], LEFT), None),
    ]
    assert node.room.message_count() == 39
    assert node.room.last_activity() == LEFT.millis


def test_an_announcement_needs_no_name_and_says_so_to_redis():
    node = Node()
    node.room.post(None, "chatbox", "hi", T, None, mark="announcement")
    args, _ = node.commands_link.pending(scripts.POST)
    assert args[1] == "" and args[-1] == "1"  # no holder; announced
    assert b'"announcement":true' in args[7]  # the entry's tail
    # An ordinary post needs a name.
    refused = node.room.post(object(), "An", "hi", T, None)
    assert refused.result.check(RoomError)
    refused.addErrback(lambda _: None)
    assert len([e for e in node.commands_link.evals if e[0] == scripts.POST]) == 1


def test_deletions_go_in_batches_sorted_once_each():
    node = Node()
    more = list(range(1000, 1000 + DELETE_BATCH))
    done = node.room.delete([5, 3, 3, -1, True, *more], T)
    wanted = [3, 5, *more]
    args, reply = node.commands_link.pending(scripts.DELETE)
    assert args[:3] == [T.text, T.millis, STREAM_LENGTH]
    assert args[3:] == wanted[:DELETE_BATCH]
    reply.callback([b"3", b"1000"])
    args, reply = node.commands_link.pending(scripts.DELETE)
    assert args[3:] == wanted[DELETE_BATCH:]
    reply.callback([])
    assert done.result == [3, 1000]
