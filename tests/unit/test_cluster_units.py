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
from chatbox.cluster.keys import Keys
from chatbox.cluster.lease import Lease
from chatbox.cluster.link import RedisInDoubt, RedisUnavailable
from chatbox.cluster.reader import RETRY_SECONDS, EventReader
from chatbox.cluster.room import RedisRoom, entry_template
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
    head, tail = entry_template("Ａn", content, T)
    for message_id in (1, 42, 10**12):
        expected = codec.encode(messages.history_entry(message_id, "Ａn", content, *T))
        assert head + str(message_id).encode() + tail == expected


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
        return reply

    def execute(self, *args) -> Deferred:
        assert args[0] == "XREAD", args
        reply: Deferred = Deferred()
        self.reads.append(reply)
        return reply

    def pending(self, script: bytes) -> tuple[list, Deferred]:
        """The oldest unanswered call of `script`: its arguments and reply."""
        for called, args, reply in self.evals:
            if called == script and not reply.called:
                return args, reply
        raise AssertionError("no such call waits for a reply")

    def stream(self, *entries: tuple[bytes, list[bytes]]) -> None:
        """Answer the XREAD that waits with `entries`."""
        waiting = [read for read in self.reads if not read.called]
        assert len(waiting) == 1, "the reader is not waiting for events"
        waiting[0].callback([[b"chatbox:events", list(entries)]])


class Node:
    """A RedisRoom of node n1, leased and reading from the stream's start,
    with every collaborator the real one over fake links."""

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.commands_link, self.reader_link = FakeLink(), FakeLink()
        keys = Keys.under()
        commands = Commands(self.commands_link, keys)
        self.reader = EventReader(self.reader_link, keys, self.clock)
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
        state.callback([[b"0-0", 0, 0]])
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
    state.callback([[b"9-0", 9, 7]])  # 8 added since, 7 kept: one trimmed unread
    assert node.lost == [[an]]


def test_reader_back_without_a_gap_reads_on():
    node = Node()
    node.reader_link.stream(_entry(b"1-0", k="register", o="n2:1", n="Bo", t="t"))
    node.reader_link.reads[-1].errback(RedisInDoubt("redis connection lost"))
    node.reader_link.reconnected()
    node.clock.advance(RETRY_SECONDS)
    _, state = node.reader_link.pending(scripts.STREAM_STATE)
    state.callback([[b"9-0", 9, 8]])  # 8 added since, all 8 kept
    assert node.lost == []
    node.reader_link.stream(_entry(b"2-0", k="leave", o="n2:1", n="Bo", t="t"))
    assert [e["datatype"] for e, _ in node.delivered] == ["register", "leave"]


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
            _entry(b"2-0", k="delete", o="n2:7", n="Bo", t="t", id="1"),
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
