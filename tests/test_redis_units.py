"""The pure parts of the Redis backend: addresses, entry templates, options."""

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from chatbox.cluster.address import RedisAddress, parse_redis_url
from chatbox.cluster.room import RedisRoom, entry_template
from chatbox.tap import Options
from chatbox.wire import codec, messages


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
    head, tail = entry_template("Ａn", content, "24/11/2026, 14:05:09")
    for message_id in (1, 42, 10**12):
        expected = codec.encode(
            messages.history_entry(message_id, "Ａn", content, "24/11/2026, 14:05:09")
        )
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


class _Link:
    """Stands in for RedisLink: each script's reply is fired by the test."""

    up = True

    def __init__(self) -> None:
        self.calls: list[tuple[list, Deferred]] = []

    def eval(self, script: bytes, keys: list, args: list) -> Deferred:
        reply: Deferred = Deferred()
        self.calls.append((list(args), reply))
        return reply


def _entry(entry_id: bytes, **fields: str) -> tuple[bytes, list[bytes]]:
    flat = [part.encode() for pair in fields.items() for part in pair]
    return entry_id, flat


def test_stream_waits_for_the_reply_of_a_claim_it_overtook():
    """The reader reaches An's register event before the claim's reply: An
    must get its reply first, then every later event, and nothing earlier."""
    clock = MemoryReactorClock()
    room = RedisRoom(RedisAddress(), clock, node="n1")
    room._commands = _Link()
    room._leased, room._read_from = True, b"0-0"
    delivered: list[tuple[str, object]] = []
    room.attach(lambda event, exclude: delivered.append((event, exclude)), print)
    an = object()
    order: list[str] = []
    room.claim(an, "An", "t").addCallback(lambda _: order.append("reply"))

    room._backlog.extend(
        [
            _entry(b"1-0", k="register", o="n2:7", n="Bo", t="t"),
            _entry(b"2-0", k="register", o="n1:1", n="An", t="t"),
            _entry(b"3-0", k="message", o="n2:7", n="Bo", c="hi", t="t", id="1"),
        ]
    )
    room._dispatch()
    assert [e["name"] for e, _ in delivered] == ["Bo"]
    assert list(room.audience()) == []

    _, reply = room._commands.calls[0]
    reply.callback(b"2-0")
    assert order == ["reply"] and room.name_of(an) == "An"
    clock.advance(0)
    assert [(e["datatype"], x) for e, x in delivered] == [
        ("register", None),
        ("register", an),  # An's own event: not to An
        ("message", None),
    ]
    assert list(room.audience()) == [an]


def test_claim_reply_before_the_stream_joins_at_its_own_event():
    clock = MemoryReactorClock()
    room = RedisRoom(RedisAddress(), clock, node="n1")
    room._commands = _Link()
    room._leased, room._read_from = True, b"0-0"
    room.attach(lambda event, exclude: None, print)
    an = object()
    room.claim(an, "An", "t")
    room._commands.calls[0][1].callback(b"5-0")
    assert room.name_of(an) == "An" and list(room.audience()) == []
    room._backlog.append(_entry(b"4-0", k="register", o="n2:1", n="Bo", t="t"))
    room._dispatch()
    assert list(room.audience()) == []  # an event from before An's claim
    room._backlog.append(_entry(b"5-0", k="register", o="n1:1", n="An", t="t"))
    room._dispatch()
    assert list(room.audience()) == [an]
