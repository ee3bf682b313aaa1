"""The admin API's HTTP layer (chatbox/admin/api.py) over a real socket,
against a fake Moderator that records what it was asked: tokens, shapes,
statuses, and an attacker's probes. Deadlines run on a Clock, so a
slowloris test takes no wall time; the sockets are real."""

import hashlib
import json
import re
from typing import Any

import pytest
import pytest_twisted
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from chatbox.admin import api
from chatbox.admin.moderator import ModerationError
from chatbox.admin.tokens import Entry, Tokens
from chatbox.auth.minting import MintError
from chatbox.metrics import Metrics

TOKEN = "s3cret-token-for-alice"
OTHER_TOKEN = "s3cret-token-for-bob"
TIMEOUT = 10
MINTED = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJNcyBMYW4ifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"


def tokens() -> Tokens:
    return Tokens(
        "tokens",
        [
            Entry("alice", hashlib.sha256(TOKEN.encode()).digest()),
            Entry("bob", hashlib.sha256(OTHER_TOKEN.encode()).digest()),
        ],
    )


class FakeModerator:
    """Records each call; answers what `answers` says (a value, or an
    exception to fail with), else a plausible default."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.answers: dict[str, Any] = {}
        self.pending: Deferred | None = None

    def _answer(self, name: str, args: tuple, default: Any) -> Deferred:
        self.calls.append((name, args))
        if self.pending is not None:
            return self.pending
        value = self.answers.get(name, default)
        if isinstance(value, Exception):
            return fail(value)
        return succeed(value)

    def _now(self, name: str, args: tuple, default: Any) -> Any:
        self.calls.append((name, args))
        value = self.answers.get(name, default)
        if isinstance(value, Exception):
            raise value
        return value

    def users(self, *args: Any) -> Any:
        return self._now("users", args, [{"room": "", "name": "An", "address": "::1"}])

    def kick(self, *args: Any) -> Deferred:
        return self._answer("kick", args, 1)

    def sanction(self, *args: Any) -> Deferred:
        return self._answer("sanction", args, {"id": "b-1", "kind": args[1]})

    def sanctions(self, *args: Any) -> Any:
        return self._now("sanctions", args, [{"id": "b-1"}])

    def lift(self, *args: Any) -> Deferred:
        return self._answer("lift", args, {"id": args[2]})

    def slow_modes(self, *args: Any) -> Any:
        return self._now("slow_modes", args, {"": 5})

    def set_slow_mode(self, *args: Any) -> Deferred:
        return self._answer("set_slow_mode", args, None)

    def delete(self, *args: Any) -> Deferred:
        return self._answer("delete", args, sorted(args[2]))

    def delete_by(self, *args: Any) -> Deferred:
        return self._answer("delete_by", args, [4, 5])

    def announce(self, *args: Any) -> Deferred:
        return self._answer("announce", args, [{"room": "", "id": 9}])

    def reserved(self, *args: Any) -> Any:
        return self._now("reserved", args, ["admin*"])

    def reserve(self, *args: Any) -> Deferred:
        return self._answer("reserve", args, None)

    def unreserve(self, *args: Any) -> Deferred:
        return self._answer("unreserve", args, True)

    def mint(self, *args: Any) -> Deferred:
        _, name, roles, rooms, days = args
        answer = {
            "token": MINTED,
            "name": name,
            "rooms": None if rooms is None else sorted(rooms),
            "roles": sorted(roles),
            "expires": 1_800_000_000_000 + days * 86_400_000,
        }
        return self._answer("mint", args, answer)

    def verified_names(self, *args: Any) -> Any:
        return self._now(
            "verified_names",
            args,
            [{"name": "Ms Lan", "rooms": None, "by": "alice", "at": 5}],
        )

    def unverify(self, *args: Any) -> Deferred:
        return self._answer("unverify", args, True)


class Raw(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(self.received)

    @property
    def status(self) -> int | None:
        match = re.match(rb"HTTP/1\.1 (\d{3}) ", self.received)
        return int(match.group(1)) if match else None

    @property
    def headers(self) -> dict[str, str]:
        head = self.received.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        return {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])
        }

    @property
    def json(self) -> Any:
        return json.loads(self.received.split(b"\r\n\r\n", 1)[1])


class Admin:
    """The admin site on a real loopback port; its timers on `clock`."""

    def __init__(self) -> None:
        self.moderator = FakeModerator()
        self.clock = Clock()
        self.metrics = Metrics()
        self.site = api.make_admin_site(
            self.moderator, tokens(), self.clock, self.metrics
        )
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")

    async def connect(self, data: bytes = b"") -> Raw:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        client = await connectProtocol(endpoint, Raw())
        if data:
            client.transport.write(data)
        return client

    async def send(self, data: bytes) -> Raw:
        """Send `data`, and read until the server closes."""
        client = await self.connect(data)
        await client.closed.addTimeout(TIMEOUT, reactor)
        return client

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = TOKEN,
        raw_body: bytes | None = None,
        headers: tuple[str, ...] = (),
    ) -> Raw:
        data = raw_body
        if data is None and body is not None:
            data = json.dumps(body).encode()
        head = [f"{method} {path} HTTP/1.1", "Host: admin", "Connection: close"]
        if token is not None:
            head.append(f"Authorization: Bearer {token}")
        if data is not None:
            head.append(f"Content-Length: {len(data)}")
        head += headers
        return await self.send(
            ("\r\n".join(head) + "\r\n\r\n").encode() + (data or b"")
        )

    def outcome(self, outcome: str) -> float:
        return self.metrics.registry.get_sample_value(
            "chatbox_admin_requests_total", {"outcome": outcome}
        )

    async def stop(self) -> None:
        for channel in list(self.site.channels):
            channel.transport.abortConnection()
        await self.port.stopListening()


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def text_of(events: list[dict]) -> str:
    return "\n".join(formatEvent(e) or "" for e in events)


@pytest_twisted.async_yield_fixture
async def admin():
    running = Admin()
    yield running
    await running.stop()


# -- tokens --


@pytest.mark.parametrize(
    "headers",
    [
        (),
        ("Authorization: Bearer wrong-token",),
        (f"Authorization: Basic {TOKEN}",),
        ("Authorization: Bearer",),
        ("Authorization: Bearer ",),
        (f"Authorization: {TOKEN}",),
        (f"Authorization: Bearer {TOKEN}x",),
        (f"Authorization: Bearer {TOKEN[:-1]}",),
        (f"Authorization: Bearer {TOKEN}", f"Authorization: Bearer {TOKEN}"),
        (f"Authorization: Bearer {hashlib.sha256(TOKEN.encode()).hexdigest()}",),
    ],
    ids=[
        "none",
        "wrong",
        "basic",
        "bearer-alone",
        "bearer-space",
        "no-scheme",
        "longer",
        "shorter",
        "twice",
        "the-hash",
    ],
)
@ensureDeferred
async def test_without_a_valid_token_nothing_is_done(admin, headers, logged):
    body = {"name": "Spammer", "reason": "spam"}
    reply = await admin.call("POST", "/v1/kick", body, token=None, headers=headers)
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert reply.json == {"error": api.UNAUTHORIZED}
    assert admin.moderator.calls == []
    assert admin.outcome("unauthorized") == 1
    text = text_of(logged)
    assert "refused POST /v1/kick from 127.0.0.1" in text
    assert TOKEN not in text and TOKEN not in reply.received.decode()


@ensureDeferred
async def test_an_unknown_path_without_a_token_is_401_not_404(admin):
    reply = await admin.call("GET", "/v1/nothing-here", token=None)
    assert reply.status == 401
    reply = await admin.call("GET", "/v1/nothing-here", token="guess")
    assert reply.status == 401


@ensureDeferred
async def test_each_token_acts_as_its_operator(admin):
    await admin.call("POST", "/v1/kick", {"name": "A", "reason": "r"})
    await admin.call("POST", "/v1/kick", {"name": "B", "reason": "r"}, OTHER_TOKEN)
    operators = [args[0] for name, args in admin.moderator.calls]
    assert operators == ["alice", "bob"]


@ensureDeferred
async def test_the_scheme_is_case_insensitive(admin):
    reply = await admin.call(
        "GET", "/v1/bans", token=None, headers=(f"authorization: bearer {TOKEN}",)
    )
    assert reply.status == 200


@ensureDeferred
async def test_refusals_are_logged_within_a_budget(admin, logged):
    for _ in range(api.AUTH_LOG_LINES + 15):
        await admin.call("GET", "/v1/bans", token="nope")
    lines = [e for e in logged if "refused GET" in (formatEvent(e) or "")]
    assert len(lines) == api.AUTH_LOG_LINES
    admin.clock.advance(api.AUTH_LOG_PERIOD)
    assert "left out 15 routine log line(s) about 127.0.0.1" in text_of(logged)
    assert admin.outcome("unauthorized") == api.AUTH_LOG_LINES + 15


# -- the endpoints: what reaches the Moderator, what comes back --

CALLS = [
    # (method, path, body, status, reply, moderator call)
    (
        "GET",
        "/v1/users",
        None,
        200,
        {"users": [{"room": "", "name": "An", "address": "::1"}]},
        ("users", (None,)),
    ),
    ("GET", "/v1/users?room=", None, 200, None, ("users", ("",))),
    ("GET", "/v1/users?room=maths", None, 200, None, ("users", ("maths",))),
    (
        "POST",
        "/v1/kick",
        {"name": "Spam", "reason": "flood"},
        200,
        {"kicked": 1},
        ("kick", ("alice", "Spam", None, "flood")),
    ),
    (
        "POST",
        "/v1/kick",
        {"name": "Spam", "room": "", "reason": "flood"},
        200,
        {"kicked": 1},
        ("kick", ("alice", "Spam", "", "flood")),
    ),
    ("GET", "/v1/bans", None, 200, {"bans": [{"id": "b-1"}]}, ("sanctions", ("ban",))),
    (
        "GET",
        "/v1/mutes",
        None,
        200,
        {"mutes": [{"id": "b-1"}]},
        ("sanctions", ("mute",)),
    ),
    (
        "POST",
        "/v1/bans",
        {"name": "Spam", "reason": "r"},
        201,
        {"ban": {"id": "b-1", "kind": "ban"}},
        (
            "sanction",
            ("alice", "ban", "name", "Spam", "r", None, None, False, "127.0.0.1"),
        ),
    ),
    (
        "POST",
        "/v1/bans",
        {"address": "10.0.0.0/24", "reason": "r", "duration": 3600, "room": "maths"},
        201,
        None,
        (
            "sanction",
            (
                "alice",
                "ban",
                "address",
                "10.0.0.0/24",
                "r",
                3600,
                "maths",
                False,
                "127.0.0.1",
            ),
        ),
    ),
    (
        "POST",
        "/v1/bans",
        {"address": "0.0.0.0/0", "reason": "r", "force": True},
        201,
        None,
        (
            "sanction",
            (
                "alice",
                "ban",
                "address",
                "0.0.0.0/0",
                "r",
                None,
                None,
                True,
                "127.0.0.1",
            ),
        ),
    ),
    (
        "POST",
        "/v1/mutes",
        {"name": "Loud", "reason": "r", "duration": 0.5},
        201,
        {"mute": {"id": "b-1", "kind": "mute"}},
        (
            "sanction",
            ("alice", "mute", "name", "Loud", "r", 0.5, None, False, "127.0.0.1"),
        ),
    ),
    (
        "DELETE",
        "/v1/bans/b-12ab",
        None,
        200,
        {"lifted": {"id": "b-12ab"}},
        ("lift", ("alice", "ban", "b-12ab")),
    ),
    ("DELETE", "/v1/mutes/m-9", None, 200, None, ("lift", ("alice", "mute", "m-9"))),
    (
        "POST",
        "/v1/messages/delete",
        {"ids": [13, 12], "reason": "r"},
        200,
        {"deleted": [12, 13]},
        ("delete", ("alice", "", [13, 12], "r")),
    ),
    (
        "POST",
        "/v1/messages/delete",
        {"room": "maths", "name": "Spam", "since": 5, "until": 9, "reason": "r"},
        200,
        {"deleted": [4, 5]},
        ("delete_by", ("alice", "maths", "Spam", 5, 9, "r")),
    ),
    (
        "POST",
        "/v1/messages/delete",
        {"name": "Spam", "reason": "r"},
        200,
        None,
        ("delete_by", ("alice", "", "Spam", None, None, "r")),
    ),
    ("GET", "/v1/slow-mode", None, 200, {"rooms": {"": 5}}, ("slow_modes", ())),
    (
        "PUT",
        "/v1/slow-mode",
        {"seconds": 10},
        200,
        {"room": "", "seconds": 10},
        ("set_slow_mode", ("alice", "", 10)),
    ),
    (
        "PUT",
        "/v1/slow-mode",
        {"room": "maths", "seconds": 0},
        200,
        {"room": "maths", "seconds": 0},
        ("set_slow_mode", ("alice", "maths", 0)),
    ),
    (
        "POST",
        "/v1/announce",
        {"text": "hello"},
        200,
        {"posted": [{"room": "", "id": 9}]},
        ("announce", ("alice", "", False, "hello")),
    ),
    (
        "POST",
        "/v1/announce",
        {"text": "hello", "all_rooms": True},
        200,
        None,
        ("announce", ("alice", None, True, "hello")),
    ),
    ("GET", "/v1/reserved", None, 200, {"reserved": ["admin*"]}, ("reserved", ())),
    (
        "POST",
        "/v1/reserved",
        {"pattern": "mod?"},
        201,
        {"reserved": "mod?"},
        ("reserve", ("alice", "mod?")),
    ),
    (
        "DELETE",
        "/v1/reserved/mod%3F%2Fx%20y",
        None,
        200,
        {"unreserved": "mod?/x y"},
        ("unreserve", ("alice", "mod?/x y")),
    ),
    (
        "POST",
        "/v1/tokens",
        {"name": "Ms Lan", "roles": ["moderator"], "rooms": ["b", "a"], "days": 180},
        201,
        {
            "token": MINTED,
            "name": "Ms Lan",
            "rooms": ["a", "b"],
            "roles": ["moderator"],
            "expires": 1_800_000_000_000 + 180 * 86_400_000,
        },
        ("mint", ("alice", "Ms Lan", ["moderator"], ["b", "a"], 180)),
    ),
    (
        "POST",
        "/v1/tokens",
        {"name": "Bạn Minh"},
        201,
        {
            "token": MINTED,
            "name": "Bạn Minh",
            "rooms": None,
            "roles": [],
            "expires": 1_800_000_000_000 + 30 * 86_400_000,
        },
        ("mint", ("alice", "Bạn Minh", [], None, 30)),
    ),
    (
        "GET",
        "/v1/verified",
        None,
        200,
        {"verified": [{"name": "Ms Lan", "rooms": None, "by": "alice", "at": 5}]},
        ("verified_names", ()),
    ),
    (
        "DELETE",
        "/v1/verified/Ms%20L%E1%BA%A1n",
        None,
        200,
        {"unverified": "Ms Lạn"},
        ("unverify", ("alice", "Ms Lạn")),
    ),
]


@pytest.mark.parametrize("method,path,body,status,reply,call", CALLS)
@ensureDeferred
async def test_an_endpoint_calls_the_moderator(
    admin, method, path, body, status, reply, call
):
    answer = await admin.call(method, path, body)
    assert answer.status == status, answer.received
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    if reply is not None:
        assert answer.json == reply
    assert admin.moderator.calls == [call]
    assert admin.outcome("ok") == 1


@ensureDeferred
async def test_unreserving_a_pattern_not_there_is_404(admin):
    admin.moderator.answers["unreserve"] = False
    reply = await admin.call("DELETE", "/v1/reserved/nope")
    assert reply.status == 404
    assert reply.json == {"error": "no such reserved pattern"}
    assert admin.outcome("not_found") == 1


# -- bad input: 400, and the Moderator never asked --

REASON = {"reason": "r"}
BAD = [
    ("/v1/kick", b"not json"),
    ("/v1/kick", b""),
    ("/v1/kick", b"[1,2]"),
    ("/v1/kick", b'"text"'),
    ("/v1/kick", b'{"name": "A", "reason": NaN}'),
    ("/v1/kick", b'{"name": "A", "reason": "r"} trailing'),
    ("/v1/kick", b"\xff\xfe{}"),
    ("/v1/kick", b"[" * 5000 + b"]" * 5000),
    ("/v1/kick", {"reason": "r"}),
    ("/v1/kick", {"name": 7, "reason": "r"}),
    ("/v1/kick", {"name": "", "reason": "r"}),
    ("/v1/kick", {"name": "A"}),
    ("/v1/kick", {"name": "A", "reason": ""}),
    ("/v1/kick", {"name": "A", "reason": "   "}),
    ("/v1/kick", {"name": "A", "reason": "x" * 501}),
    ("/v1/kick", {"name": "A", "reason": "line\nforged audit: x"}),
    ("/v1/kick", {"name": "A", "reason": ["r"]}),
    ("/v1/kick", {"name": "A", "reason": "r", "room": 3}),
    ("/v1/kick", {"name": "A", "reason": "r", "reson": "typo"}),
    ("/v1/bans", {"reason": "r"}),
    ("/v1/bans", {"name": "A", "address": "1.2.3.4", "reason": "r"}),
    ("/v1/bans", {"address": "", "reason": "r"}),
    ("/v1/bans", {"name": "A", "reason": "r", "duration": 0}),
    ("/v1/bans", {"name": "A", "reason": "r", "duration": -5}),
    ("/v1/bans", {"name": "A", "reason": "r", "duration": "1h"}),
    ("/v1/bans", {"name": "A", "reason": "r", "duration": True}),
    ("/v1/bans", {"name": "A", "reason": "r", "duration": 10 * 365 * 86400 + 1}),
    ("/v1/bans", {"name": "A", "reason": "r", "duration": 1e300}),
    ("/v1/bans", {"name": "A", "reason": "r", "force": "yes"}),
    ("/v1/bans", {"name": "A", "reason": "r", "force": 1}),
    ("/v1/mutes", {"name": "A", "reason": "r"}),
    ("/v1/messages/delete", {"ids": [], **REASON}),
    ("/v1/messages/delete", {"ids": 12, **REASON}),
    ("/v1/messages/delete", {"ids": [0], **REASON}),
    ("/v1/messages/delete", {"ids": [-1], **REASON}),
    ("/v1/messages/delete", {"ids": [1.5], **REASON}),
    ("/v1/messages/delete", {"ids": [True], **REASON}),
    ("/v1/messages/delete", {"ids": ["12"], **REASON}),
    ("/v1/messages/delete", {"ids": [2**63], **REASON}),
    ("/v1/messages/delete", {"ids": list(range(1, 10_002)), **REASON}),
    ("/v1/messages/delete", {"ids": [1]}),
    ("/v1/messages/delete", {"ids": [1], "name": "A", **REASON}),
    ("/v1/messages/delete", {**REASON}),
    ("/v1/messages/delete", {"name": "A", "since": 9, "until": 5, **REASON}),
    ("/v1/messages/delete", {"name": "A", "since": "yesterday", **REASON}),
    ("/v1/messages/delete", {"name": "A", "until": -1, **REASON}),
    ("/v1/announce", {}),
    ("/v1/announce", {"text": ""}),
    ("/v1/announce", {"text": 5}),
    ("/v1/announce", {"text": "hi", "room": "", "all_rooms": True}),
    ("/v1/announce", {"text": "hi", "all_rooms": "yes"}),
    ("/v1/reserved", {}),
    ("/v1/reserved", {"pattern": ["a"]}),
    ("/v1/tokens", {}),
    ("/v1/tokens", {"name": ""}),
    ("/v1/tokens", {"name": 5}),
    ("/v1/tokens", {"name": "a\u0000b"}),
    ("/v1/tokens", {"name": "x" * 101}),
    ("/v1/tokens", {"name": "A", "roles": "moderator"}),
    ("/v1/tokens", {"name": "A", "roles": ["admin"]}),
    ("/v1/tokens", {"name": "A", "roles": []}),
    ("/v1/tokens", {"name": "A", "roles": [1]}),
    ("/v1/tokens", {"name": "A", "rooms": []}),
    ("/v1/tokens", {"name": "A", "rooms": "a"}),
    ("/v1/tokens", {"name": "A", "rooms": [f"r{n}" for n in range(101)]}),
    ("/v1/tokens", {"name": "A", "days": 0}),
    ("/v1/tokens", {"name": "A", "days": 367}),
    ("/v1/tokens", {"name": "A", "days": 1.5}),
    ("/v1/tokens", {"name": "A", "days": "30"}),
    ("/v1/tokens", {"name": "A", "secret": "x"}),
    # Attacker review: the last of a repeated field was obeyed.
    ("/v1/bans", b'{"name": "x", "name": "y", "reason": "r"}'),
]


@pytest.mark.parametrize("path,body", BAD, ids=range(len(BAD)))
@ensureDeferred
async def test_bad_input_is_400_and_nothing_done(admin, path, body):
    raw = body if isinstance(body, bytes) else None
    reply = await admin.call(
        "POST", path, None if raw is not None else body, raw_body=raw
    )
    assert reply.status == 400, reply.received
    assert set(reply.json) == {"error"}
    assert admin.moderator.calls == []
    assert admin.outcome("bad_request") == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"seconds": -1},
        {"seconds": "5"},
        {"seconds": 86_401},
        {"room": 1, "seconds": 1},
    ],
)
@ensureDeferred
async def test_bad_slow_mode_is_400(admin, body):
    reply = await admin.call("PUT", "/v1/slow-mode", body)
    assert reply.status == 400
    assert admin.moderator.calls == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1/users?room=a&room=b",
        "/v1/users?other=1",
        "/v1/bans?x=1",
        "/v1/users?room=%ff",
    ],
)
@ensureDeferred
async def test_a_query_not_understood_is_400(admin, path):
    reply = await admin.call("GET", path)
    assert reply.status == 400
    assert admin.moderator.calls == []


@pytest.mark.parametrize(
    "method,path,status,allow",
    [
        ("GET", "/", 404, None),
        ("GET", "/v1", 404, None),
        ("GET", "/v1/", 404, None),
        ("GET", "/v2/users", 404, None),
        ("GET", "/v1/users/", 404, None),
        ("GET", "/v1/bans/b-1/more", 404, None),
        ("GET", "/v1/messages", 404, None),
        ("GET", "/v1/%ff", 404, None),
        ("POST", "/v1/users", 405, "GET"),
        ("DELETE", "/v1/bans", 405, "GET, POST"),
        ("GET", "/v1/bans/b-1", 405, "DELETE"),
        ("HEAD", "/v1/users", 405, "GET"),
        ("PATCH", "/v1/slow-mode", 405, "GET, PUT"),
    ],
)
@ensureDeferred
async def test_unknown_paths_and_methods(admin, method, path, status, allow):
    reply = await admin.call(method, path)
    assert reply.status == status
    if allow is not None:
        assert reply.headers["allow"] == allow
    assert admin.moderator.calls == []


@ensureDeferred
async def test_a_head_gets_the_head_alone(admin, logged):
    """Attacker review: a HEAD's 405 carried a body, which twisted.web
    logged a line about dropping."""
    reply = await admin.call("HEAD", "/v1/users")
    assert reply.status == 405
    assert reply.received.split(b"\r\n\r\n", 1)[1] == b""
    assert "eat it" not in text_of(logged)


# -- the Moderator's refusals and failures --


@pytest.mark.parametrize(
    "status,outcome", [(400, "bad_request"), (404, "not_found"), (409, "conflict")]
)
@ensureDeferred
async def test_a_moderator_refusal_keeps_its_status(admin, status, outcome):
    admin.moderator.answers["sanction"] = ModerationError(status, "because")
    reply = await admin.call(
        "POST", "/v1/bans", {"address": "0.0.0.0/0", "reason": "r"}
    )
    assert reply.status == status
    assert reply.json == {"error": "because"}
    assert admin.outcome(outcome) == 1


@ensureDeferred
async def test_a_synchronous_refusal_too(admin):
    admin.moderator.answers["users"] = ModerationError(404, "no room 'x'")
    reply = await admin.call("GET", "/v1/users?room=x")
    assert reply.status == 404
    assert reply.json == {"error": "no room 'x'"}


@ensureDeferred
async def test_any_other_failure_is_500_with_a_generic_message(
    admin, no_logged_failures
):
    admin.moderator.answers["kick"] = RuntimeError(f"secret detail {TOKEN}")
    reply = await admin.call("POST", "/v1/kick", {"name": "A", "reason": "r"})
    assert reply.status == 500
    assert reply.json == {"error": "internal error; see the server log"}
    assert "secret" not in reply.received.decode()
    assert admin.outcome("error") == 1
    assert len(no_logged_failures) == 1 and "RuntimeError" in no_logged_failures[0]
    no_logged_failures.clear()


@ensureDeferred
async def test_a_client_gone_before_the_answer_costs_nothing(admin):
    admin.moderator.pending = Deferred()
    client = await admin.connect(
        b"POST /v1/kick HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b'\r\nContent-Length: 28\r\n\r\n{"name":"A","reason":"spam"}'
    )
    while not admin.moderator.calls:
        await sleep(0.01)
    client.transport.abortConnection()
    await client.closed
    await sleep(0.05)
    admin.moderator.pending.callback(1)  # the kick was done: counted, not written
    assert admin.outcome("ok") == 1


# -- bodies --


@ensureDeferred
async def test_an_announced_body_over_64_kib_is_refused_before_it_is_read(admin):
    head = (
        "POST /v1/announce HTTP/1.1\r\nHost: a\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {api.MAX_BODY + 1}\r\n\r\n"
    )
    client = await admin.connect(head.encode())
    await client.closed.addTimeout(TIMEOUT, reactor)  # without a byte of body
    assert client.status == 413
    assert admin.moderator.calls == []
    assert admin.outcome("bad_request") == 1


@ensureDeferred
async def test_a_huge_announced_body_is_refused_at_once(admin):
    reply = await admin.send(
        b"POST /v1/announce HTTP/1.1\r\nHost: a\r\n"
        b"Content-Length: 99999999999999\r\n\r\n"
    )
    assert reply.status == 413


@ensureDeferred
async def test_a_chunked_body_is_cut_off_past_64_kib(admin):
    chunk = b"x" * 8192
    data = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(9))
    head = (
        "POST /v1/announce HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n"
    ).encode()
    reply = await admin.send(head + data)
    assert reply.status == 413
    assert admin.moderator.calls == []


@ensureDeferred
async def test_a_chunked_body_within_64_kib_is_read(admin):
    body = json.dumps({"text": "hello"}).encode()
    data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    head = (
        "POST /v1/announce HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        f"Connection: close\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    ).encode()
    reply = await admin.send(head + data)
    assert reply.status == 200
    assert admin.moderator.calls == [("announce", ("alice", "", False, "hello"))]


@ensureDeferred
async def test_a_body_of_exactly_64_kib_is_read(admin):
    text = "x" * (api.MAX_BODY - len(json.dumps({"text": ""})))
    body = json.dumps({"text": text}).encode()
    assert len(body) == api.MAX_BODY
    reply = await admin.call("POST", "/v1/announce", raw_body=body)
    assert reply.status == 200


# -- slowloris and connection floods --


@ensureDeferred
async def test_a_request_trickled_in_is_cut_at_the_deadline(admin):
    client = await admin.connect(b"GET /v1/bans HTTP/1.1\r\nHost: a\r\n")
    for _ in range(int(api.REQUEST_DEADLINE) - 1):
        client.transport.write(b"X-A: b\r\n")  # bytes do not extend it
        admin.clock.advance(1)
        await sleep(0.01)
    assert not client.closed.called
    admin.clock.advance(1)
    await client.closed.addTimeout(TIMEOUT, reactor)
    assert client.status == 408
    assert admin.moderator.calls == []


@ensureDeferred
async def test_an_idle_connection_is_closed_at_the_deadline(admin):
    client = await admin.connect()
    await sleep(0.01)
    admin.clock.advance(api.REQUEST_DEADLINE)
    await client.closed.addTimeout(TIMEOUT, reactor)
    assert client.status == 408


@ensureDeferred
async def test_the_deadline_waits_while_a_request_is_served(admin):
    admin.moderator.pending = Deferred()
    client = await admin.connect(
        b"POST /v1/kick HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        b"Authorization: Bearer "
        + TOKEN.encode()
        + b'\r\nContent-Length: 28\r\n\r\n{"name":"A","reason":"spam"}'
    )
    while not admin.moderator.calls:
        await sleep(0.01)
    admin.clock.advance(api.REQUEST_DEADLINE * 3)
    await sleep(0.05)
    assert not client.closed.called
    admin.moderator.pending.callback(2)
    await client.closed.addTimeout(TIMEOUT, reactor)
    assert client.status == 200
    assert client.json == {"kicked": 2}


@ensureDeferred
async def test_kept_alive_requests_each_get_the_deadline(admin):
    request = (
        f"GET /v1/bans HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    ).encode()
    client = await admin.connect(request)
    for count in range(1, 4):
        while client.received.count(b"HTTP/1.1 200") < count:
            await sleep(0.01)
        admin.clock.advance(api.REQUEST_DEADLINE - 1)
        client.transport.write(request)
    await sleep(0.05)
    admin.clock.advance(api.REQUEST_DEADLINE)
    await client.closed.addTimeout(TIMEOUT, reactor)
    assert client.received.count(b"HTTP/1.1 200") == 4


@ensureDeferred
async def test_a_crowd_of_idle_connections_cannot_lock_operators_out(admin):
    idle = [await admin.connect(b"GET /v1/") for _ in range(api.MAX_CONNECTIONS)]
    while len(admin.site.channels) < api.MAX_CONNECTIONS:
        await sleep(0.01)
    reply = await admin.call("GET", "/v1/bans")
    assert reply.status == 200
    await idle[0].closed.addTimeout(TIMEOUT, reactor)  # the oldest made room
    assert not idle[-1].closed.called
    assert len(admin.site.channels) <= api.MAX_CONNECTIONS


@ensureDeferred
async def test_a_head_too_large_is_refused(admin):
    reply = await admin.send(
        b"GET /v1/bans HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n"
    )
    assert reply.status == 400
    reply = await admin.send(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
    assert reply.status == 414
    reply = await admin.send(b"GET / HTTP/1.1\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n")
    assert reply.status == 431


def sleep(seconds: float) -> Deferred:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


# -- tokens for verified nicknames --


@ensureDeferred
async def test_a_minted_token_is_in_the_reply_only(admin, logged):
    reply = await admin.call("POST", "/v1/tokens", {"name": "Ms Lan"})
    assert reply.status == 201 and reply.json["token"] == MINTED
    refused = await admin.call("POST", "/v1/tokens", {"name": "Ms Lan"}, token="x")
    assert refused.status == 401
    assert MINTED not in text_of(logged)
    assert MINTED.encode() not in refused.received


@pytest.mark.parametrize(
    ("error", "status", "says"),
    [
        (
            ModerationError(
                409, "this server has no --auth-secret to sign tokens with"
            ),
            409,
            "this server has no --auth-secret to sign tokens with",
        ),
        (MintError("rooms: 'x y': not a room"), 400, "rooms: 'x y': not a room"),
    ],
)
@ensureDeferred
async def test_a_token_the_moderator_refuses(admin, error, status, says):
    admin.moderator.answers["mint"] = error
    reply = await admin.call("POST", "/v1/tokens", {"name": "Ms Lan", "rooms": ["x y"]})
    assert (reply.status, reply.json) == (status, {"error": says})


@ensureDeferred
async def test_unverifying_a_nickname_not_verified_is_404(admin):
    admin.moderator.answers["unverify"] = False
    reply = await admin.call("DELETE", "/v1/verified/Nobody")
    assert (reply.status, reply.json) == (404, {"error": "no such verified nickname"})
