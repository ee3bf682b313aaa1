"""Property-based bad-input campaign against a real server over real sockets.

Hypothesis drives a pool of real WebSocket clients with arbitrary JSON
values, requests full of hostile Unicode, huge numbers, deep nesting,
random text and binary frames, and abrupt disconnects. After every action:

- every reply is one of docs/PROTOCOL.md's shapes;
- ARNS holds: the server answers `name` exactly as a simple model predicts,
  no two live connections hold names that look the same (PROTOCOL.md's
  nickname rules: the same UTS #39 skeleton, ignoring invisible and
  surrounding blank characters), every live
  registered connection is in `online` (in registration order) and nobody
  who left is;
- nothing was logged as a failure (the autouse fixture in conftest.py).
"""

import json

import icu
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThread

from tests.client import connect

# -- what PROTOCOL.md allows a reply to look like --

REPLY_SHAPES = {
    ("name", True): [
        {"type", "action", "name", "status", "timestamp", "time"},
        {"type", "action", "oldname", "newname", "status", "timestamp", "time"},
    ],
    ("name", False): [
        {"type", "action", "name", "status", "reason"},
        {"type", "action", "oldname", "newname", "status", "reason"},
        {"type", "status", "reason", "need"},
    ],
    ("send", True): [
        {"type", "name", "content", "status", "timestamp", "time", "id"},
        {"type", "name", "content", "status", "timestamp", "time", "id", "send_id"},
    ],
    ("send", False): [
        {"type", "username", "content", "status", "reason"},
        {"type", "status", "reason"},
        {"type", "status", "reason", "need"},
        {"type", "status", "reason", "field"},
    ],
    ("get", True): [{"type", "status", "name", "timestamp", "time", "data"}],
    ("get", False): [
        {"type", "status", "reason"},
        {"type", "status", "reason", "field"},
    ],
    ("online", True): [{"type", "status", "count"}],
    (None, False): [{"type", "status", "reason"}, {"status", "reason"}],
}
REASONS = {
    "NameAlreadyUsed",
    "WrongFormatName",
    "NotEnoughKey",
    "UnknownRegister",
    "WrongFormatContent",
    "WrongFormatJSON",
    "UnknownType",
    "WrongFormatArgument",
}


def check_shape(reply: dict) -> None:
    assert isinstance(reply, dict)
    key = (reply.get("type"), reply.get("status"))
    assert key in REPLY_SHAPES, reply
    assert set(reply) in REPLY_SHAPES[key], reply
    if reply["status"] is False:
        assert reply["reason"] in REASONS, reply
    if reply.get("type") == "get" and reply["status"]:
        assert set(reply["data"]) == {"message", "online"}
        for message in reply["data"]["message"]:
            assert set(message) == {"id", "name", "content", "timestamp", "time"}


# -- hostile input --

TRICKY = [
    "an",
    "An",
    "AN",
    "Ａn",
    "ａｎ",
    " an",
    "an ",
    "a\u0301n",
    "án",
    "\u202ean",
    "an\u200d",
    "\u200b",
    "👨\u200d👩\u200d👧",
    "e\u0301",
    "ß",
    "SS",
    "ss",
    "ﬀ",
    "ff",
    "\ufeff",
    "\ud800",
    "a\udfff",
    "\u200f",
    "\u0301",
    "\u061c",
    "𝐚𝐧",
    "ⓐⓝ",
    "İ",
    "i̇",
    "ǅ",
    "аn",  # Cyrillic а
    "АN",
    "an\u3164",
    "a\u034fn",
    "a\u2800n",
    "a n",
    "\u3164",
    "\u2800",
    "\u115f\u1160",
    "rn",
    "m",
    "x" * 100,
    "x" * 101,
    "",
]
names = st.one_of(
    st.sampled_from(TRICKY),
    st.text(alphabet="aAnNｎＡ", min_size=1, max_size=3),
    st.text(max_size=110),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=10), children, max_size=5),
    ),
    max_leaves=20,
)
requests = st.one_of(
    st.builds(lambda n: {"type": "name", "name": n}, st.one_of(names, json_values)),
    st.builds(
        lambda c: {"type": "send", "content": c},
        st.one_of(st.text(max_size=60), st.sampled_from(TRICKY), json_values),
    ),
    st.builds(
        lambda c, i: {"type": "send", "content": c, "send_id": i},
        st.text(max_size=20),
        st.one_of(st.sampled_from(["s1", "s2", "x" * 65, ""]), json_values),
    ),
    st.just({"type": "online"}),
    st.builds(
        lambda q: {"type": "get", **q},
        st.dictionaries(st.sampled_from(["limit", "before", "after"]), json_values),
    ),
    st.dictionaries(
        st.one_of(st.sampled_from(["type", "name", "content"]), st.text(max_size=5)),
        json_values,
        max_size=4,
    ),
    json_values,
)


def encoded(value, ascii_only: bool) -> bytes:
    text = json.dumps(value, ensure_ascii=ascii_only)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: send it escaped
        return json.dumps(value).encode("utf-8")


# Name requests drawn from look-alikes, often enough that two clients race
# for names ARNS must treat as one.
name_requests = st.tuples(
    st.just("json"),
    st.builds(lambda n: {"type": "name", "name": n}, st.sampled_from(TRICKY) | names),
    st.booleans(),
)
actions = st.one_of(
    name_requests,
    name_requests,
    name_requests,
    st.tuples(st.just("json"), requests, st.booleans()),
    st.tuples(
        st.just("deep"), st.integers(min_value=1000, max_value=3000), st.just(None)
    ),
    st.tuples(st.just("text"), st.binary(max_size=200), st.just(None)),
    st.tuples(st.just("binary"), st.binary(max_size=50), st.just(None)),
    st.tuples(st.just("close"), st.booleans(), st.just(None)),
)


# -- the model of ARNS the server must agree with --

# PROTOCOL.md's rules, written out here rather than imported, so that the
# model is independent of the code it checks.


FORBIDDEN = icu.UnicodeSet(
    "[[:Cc:][:Cf:][:Zl:][:Zp:][:Cs:][:Cn:][:Co:][:Noncharacter_Code_Point:]]"
)
MARK = icu.UnicodeSet("[:M:]")
IGNORABLE = icu.UnicodeSet("[:Default_Ignorable_Code_Point:]")
BLANK = icu.UnicodeSet("[[:White_Space:]\\u2800\\U0001D159]")
SPOOF = icu.SpoofChecker()
NFKC = icu.Normalizer2.getNFKCInstance()
NFKC_CASEFOLD = icu.Normalizer2.getNFKCCasefoldInstance()


def visible(name: str) -> str:
    kept = "".join(" " if BLANK.contains(c) else c for c in name)
    words = "".join(c for c in kept if not IGNORABLE.contains(c)).split(" ")
    return " ".join(word for word in words if word)


def name_keys(name: str) -> set[str]:
    shown = visible(name)
    return {
        SPOOF.getSkeleton(0, NFKC_CASEFOLD.normalize(shown)),
        SPOOF.getSkeleton(0, NFKC.normalize(shown)),
    }


def is_valid_name(name) -> bool:
    return (
        isinstance(name, str)
        and 1 <= len(name) <= 100
        and not any("\ud800" <= c <= "\udfff" or FORBIDDEN.contains(c) for c in name)
        and any(c != " " and not MARK.contains(c) for c in visible(name))
    )


class Pool:
    """Real clients, and what the model says each one is named."""

    def __init__(self, server, observer, size: int) -> None:
        self.server = server
        self.observer = observer
        self.clients = [None] * size
        self.names: dict[int, str] = {}  # slot -> name, in registration order

    async def client(self, slot: int):
        client = self.clients[slot]
        if client is None or client.closed.called:
            client = await connect(self.server.url)
            self.clients[slot] = client
        return client

    def online(self) -> list[str]:
        return [OBSERVER, *self.names.values()]

    def predict_name(self, slot: int, name) -> tuple[bool, str | None]:
        """(status, reason) the server must answer to `name` from `slot`."""
        if isinstance(name, str) and any("\ud800" <= c <= "\udfff" for c in name):
            return False, "WrongFormatJSON"  # a lone surrogate is not JSON text
        if not is_valid_name(name):
            return False, "WrongFormatName"
        if name == self.names.get(slot):
            return False, "NameAlreadyUsed"
        others = [n for s, n in self.names.items() if s != slot] + [OBSERVER]
        if any(name_keys(name) & name_keys(other) for other in others):
            return False, "NameAlreadyUsed"
        return True, None

    async def left(self, slot: int) -> None:
        """Wait until the server has seen the slot's connection go."""
        self.clients[slot] = None
        name = self.names.pop(slot, None)
        while name is not None:
            event = await self.observer.event()
            if event["datatype"] == "leave" and event["name"] == name:
                return


OBSERVER = "⟪observer⟫"


async def run(pool: Pool, slot: int, action) -> None:
    kind, payload, flag = action
    client = await pool.client(slot)
    closes_with = None
    if kind == "close":
        if flag:
            client.sendClose(1000)
        else:
            client.abort()
        closes_with = ...
    elif kind == "binary":
        client.sendMessage(payload, isBinary=True)
        closes_with = 1003
    elif kind == "text":
        client.sendMessage(payload)
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            closes_with = 1007
    elif kind == "deep":
        client.sendMessage(b"[" * payload + b"]" * payload)
    else:
        client.sendMessage(encoded(payload, flag))
    if closes_with is not None:
        await client.wait_closed()
        if closes_with is not ...:
            assert client.server_close_code == closes_with
        await pool.left(slot)
        return
    reply = await client.reply()
    check_shape(reply)
    is_name = isinstance(payload, dict) and payload.get("type") == "name"
    if kind == "json" and is_name and "name" in payload:
        expected = pool.predict_name(slot, payload["name"])
        assert (reply["status"], reply.get("reason")) == expected, (payload, reply)
        if reply["status"]:
            pool.names[slot] = payload["name"]


async def check_arns(pool: Pool) -> None:
    online = pool.server.factory.room.registry.online()
    for i, name in enumerate(online):
        for other in online[:i]:
            assert not name_keys(name) & name_keys(other), (name, other)
    assert online == pool.online()
    reply = await pool.observer.get(limit=1)
    assert reply["data"]["online"] == pool.online()


def rename(name: str) -> tuple:
    return ("json", {"type": "name", "name": name}, False)


# Always tried: clients racing for names that look the same.
LOOK_ALIKE_RACE = [
    (0, "an"),
    (1, "AN"),
    (2, "Ａn"),
    (1, "Bo"),
    (2, "bO"),
    (0, "An"),
    (3, "an"),
    (0, "ǅ"),
    (3, "ǆ"),
    (1, "ss"),
    (2, "ß"),
    (2, "SS"),
    (2, "an"),  # free again
    (3, "аn"),  # Cyrillic а: looks like 2's
    (3, "an\u3164"),  # an invisible character
    (3, " an "),
    (2, "аn "),  # a look-alike of one's own name: a normal change
    (3, "rn"),
    (0, "m"),  # looks like 3's rn
]


def in_reactor(coroutine_function, *args):
    """Run a coroutine in the reactor from Hypothesis' thread, and wait."""
    return blockingCallFromThread(
        reactor, lambda: Deferred.fromCoroutine(coroutine_function(*args))
    )


@ensureDeferred
async def test_hostile_traffic_gets_protocol_replies_and_arns_holds(server):
    pool = Pool(server, await server.user(OBSERVER), size=4)

    @settings(
        max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        steps=st.lists(st.tuples(st.integers(0, 3), actions), min_size=1, max_size=12)
    )
    @example(steps=[(slot, rename(name)) for slot, name in LOOK_ALIKE_RACE])
    def hostile_traffic(steps):
        for slot, action in steps:
            in_reactor(run, pool, slot, action)
            in_reactor(check_arns, pool)

    # Hypothesis runs in a thread; each step is carried out in the reactor.
    await deferToThread(hostile_traffic)
