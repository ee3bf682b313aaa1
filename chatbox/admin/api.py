# -*- test-case-name: tests.unit.test_admin_api,tests.test_admin -*-
"""The operator API over HTTP: its own listener, never the chat port.

This module only authenticates, checks the JSON's types and shapes, calls
chatbox.admin.moderator.Moderator, and turns its answer or refusal into a
status and a JSON body. The Moderator audits and counts the actions; this
module counts requests by outcome (`chatbox_admin_requests_total`).

Every request carries `Authorization: Bearer TOKEN`; bodies and answers are
JSON objects; a refusal is `{"error": why}` with 400 (bad input), 401 (no
valid token), 404 (no such endpoint, room, ban or pattern), 405 (wrong
method, with Allow), 409 (a ban that needs `force`), 413 (a body over 64
KiB), 503 (the rules could not be kept), 500 (anything else; the log says
what). A room is "" for the default room (`/`) or its name; where it is
left out, a kick, ban or mute covers every room and anything else means
the default room. A body field this module does not know is refused.

    GET    /v1/users[?room=R]    {"users": [{"room", "name", "address"}]}
    POST   /v1/kick              {"name", "room"?, "reason"} -> {"kicked": K}
    GET    /v1/bans | /v1/mutes  {"bans": [sanction]} | {"mutes": [...]}
    POST   /v1/bans | /v1/mutes  {"name" | "address", "reason", "duration"?,
                                 "room"?, "force"?} -> 201 {"ban" | "mute":
                                 sanction}; a mute needs a duration (s)
    DELETE /v1/bans/ID | /v1/mutes/ID    -> {"lifted": sanction}
    POST   /v1/messages/delete   {"room"?, "ids": [N...], "reason"} or
                                 {"room"?, "name", "since"?, "until"?,
                                 "reason"} (epoch ms) -> {"deleted": [N...]}
    GET    /v1/slow-mode         {"rooms": {R: seconds}}
    PUT    /v1/slow-mode         {"room"?, "seconds"} (0: off) -> the same
    POST   /v1/announce          {"text", "room"? | "all_rooms": true}
                                 -> {"posted": [{"room", "id"}]}
    GET    /v1/reserved          {"reserved": [pattern]}
    POST   /v1/reserved          {"pattern"} -> 201 {"reserved": pattern}
    DELETE /v1/reserved/PATTERN  (percent-encoded) -> {"unreserved": pattern}
    POST   /v1/tokens            {"name", "roles"?: [R...], "rooms"?: [ROOM...],
                                 "days"?} -> 201 {"token", "name", "rooms"
                                 (null: every room), "roles", "expires" (ms)}
    GET    /v1/verified          {"verified": [{"name", "rooms", "by", "at"}]}
    DELETE /v1/verified/NAME     (percent-encoded) -> {"unverified": name}
    POST   /v1/tls/reload        (no body) -> {"subject", "issuer", "serial",
                                 "not_before", "not_after" (ms), "fingerprint",
                                 "changed"}; 409 with why the files on disk
                                 cannot be served (the old pair stays)
    GET    /v1/export[?room=R][&nickname=N][&since=MS][&until=MS]
                                 200 application/x-ndjson: one stored entry
                                 per line, {"room": R, ...entry} (no room:
                                 every room); 404 for a room not there
    GET    /v1/backup            200 application/x-ndjson: every room's
                                 entries, the rules, and a last "done" line
                                 (chatbox.admin.history.HistoryActions.backup)
    POST   /v1/import?room=R     {"messages": [{"name", "content",
                                 "timestamp", "time"?, "mark"?}...]}
                                 -> {"imported": [N...]} (all or nothing)
    POST   /v1/erase             {"name", "room"?, "since"?, "until"?,
                                 "reason"} -> {"erased": {R: count}, "total"}

A minted token is in its response body only: never in a log line, an
audit line (which names the nickname and the token's jti) or an error.

A reason is 1 to 500 printable characters on one line; a duration above 0
and at most ten years; ids positive integers, at most 10,000 at once;
slow mode at most a day; a token's days 1 to 366 (30 if left out), its
roles from those chatbox knows, at most 100 rooms.

What an attacker on the admin port meets:

- Nothing is done without `Authorization: Bearer TOKEN` naming a token of
  the file (chatbox.admin.tokens, compared in constant time): 401 with
  `WWW-Authenticate: Bearer`, the same for a missing, malformed or wrong
  one, so a reply says nothing about which. A refusal is logged with the
  peer's address, at most AUTH_LOG_LINES per address per AUTH_LOG_PERIOD
  (chatbox.logsafe.LogBudget); the token is never logged or echoed.
- A body announced above MAX_BODY is refused with 413 before a byte of it
  is read; a chunked one is counted as it arrives and refused the moment
  it passes MAX_BODY. Bodies are held in memory (never a temporary file:
  the reactor does no disk I/O).
- Each request must arrive whole within REQUEST_DEADLINE of the accept (or
  of the end of the previous response on a kept-alive connection), however
  slowly it trickles: 408 and closed. At most MAX_CONNECTIONS are open at
  once; past that a new connection pushes out the oldest one not being
  served, so a crowd of idle connections cannot lock operators out.
- Heads are capped (count, line, total) as on the chat port.
"""

import io
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource
from zope.interface import implementer

from chatbox.admin.history import HistoryActions, Stopped, checked_import
from chatbox.admin.moderator import ModerationError
from chatbox.admin.tokens import Tokens
from chatbox.auth.minting import DEFAULT_DAYS, MAX_DAYS, ROLES, MintError
from chatbox.chat.arns import is_valid_name
from chatbox.endpoints import CertificateError
from chatbox.httptext import canned
from chatbox.logsafe import LogBudget, printable
from chatbox.metrics import Metrics
from chatbox.wire import codec

__all__ = ["AdminSite", "make_admin_site"]

log = Logger()
_audit = Logger(namespace="chatbox.audit")

MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 64
REQUEST_DEADLINE = 10.0
# A connection told to close that does not (its peer stopped reading) is
# dropped this much later; a refused body may go on arriving meanwhile, up
# to LINGER_BYTES, so the client reads its 413 instead of a reset.
CLOSE_GRACE = 2.0
LINGER_BYTES = 256 * 1024
AUTH_LOG_LINES = 10
AUTH_LOG_PERIOD = 60.0

MAX_REASON = 500
MAX_IDS = 10_000
MAX_ID = 2**63 - 1
MAX_DURATION = 10 * 365 * 86_400  # ten years, in seconds
MAX_SLOW_MODE = 86_400
# An export or backup whose reader has not taken a byte for this long is
# cut off: it holds a room loaded and a page in memory for nobody.
STALL_DEADLINE = 60.0
MAX_IMPORT = 10_000
# Exports and backups streaming at once: each holds a connection (of
# MAX_CONNECTIONS), a room loaded and a page; past this a stuck script's
# unread streams would leave no connection for the operator's next ban.
MAX_STREAMS = 8

BODY_TOO_LARGE = canned(413, f"request bodies are at most {MAX_BODY} bytes")
TIMED_OUT = canned(408, "request not completed in time")
BUSY = canned(503, "too many admin connections", b"Retry-After: 1")
URI_TOO_LONG = canned(414, "request target too long")
HEAD_TOO_LARGE = canned(431, "request head too large")

_OUTCOMES = {
    200: "ok",
    201: "ok",
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "bad_request",
    408: "bad_request",
    409: "conflict",
    413: "bad_request",
    429: "conflict",
}
UNAUTHORIZED = "a valid bearer token is needed (Authorization: Bearer TOKEN)"


class _Answer(Exception):
    """A reply decided while checking a request: its status and message."""

    def __init__(self, status: int, message: str, allow: bytes | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.allow = allow


def _bad(message: str) -> _Answer:
    return _Answer(400, message)


# -- the JSON body's fields --


class Body:
    """A request's JSON object, read field by field; a field nobody asked
    for is refused at the end (a typo like `reson` must not be ignored)."""

    def __init__(self, value: dict[str, Any]) -> None:
        self.value = value
        self.used: set[str] = set()

    def get(self, key: str) -> Any:
        """The field, or None when it is absent or null."""
        self.used.add(key)
        return self.value.get(key)

    def done(self) -> None:
        unknown = sorted(set(self.value) - self.used)
        if unknown:
            raise _bad(f"unknown field {printable(unknown[0], 40)!r}")

    def string(self, key: str, required: bool = True, limit: int = 10_000) -> Any:
        value = self.get(key)
        if value is None:
            if required:
                raise _bad(f"{key} is required")
            return None
        if not isinstance(value, str):
            raise _bad(f"{key} must be a string")
        if required and not value:
            raise _bad(f"{key} cannot be empty")
        if len(value) > limit:
            raise _bad(f"{key} is longer than {limit} characters")
        return value

    def room(self, default: str | None) -> str | None:
        """The room: "" is the default room (`/`); absent, `default`."""
        room = self.string("room", required=False, limit=1000)
        return default if room is None else room

    def reason(self) -> str:
        reason = self.string("reason", limit=MAX_REASON)
        if not reason.strip():
            raise _bad("reason cannot be blank")
        if not reason.isprintable():
            raise _bad("reason must be printable text on one line")
        return reason

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise _bad(f"{key} must be true or false")
        return value

    def number(self, key: str, low: float, high: float, above: bool) -> float | None:
        """A JSON number in (low, high] if `above`, else [low, high]."""
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(f"{key} must be a number")
        if value > high or value < low or (above and value == low):
            bound = "above" if above else "at least"
            raise _bad(f"{key} must be {bound} {low:g} and at most {high:g}")
        return value

    def integer(self, key: str) -> int | None:
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(f"{key} must be an integer")
        if not 0 <= value <= MAX_ID:
            raise _bad(f"{key} is out of range")
        return value

    def ids(self) -> list[int]:
        ids = self.get("ids")
        if not isinstance(ids, list) or not ids:
            raise _bad("ids must be a non-empty list of message ids")
        if len(ids) > MAX_IDS:
            raise _bad(f"at most {MAX_IDS} ids at once")
        for value in ids:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _bad("each id must be an integer")
            if not 1 <= value <= MAX_ID:
                raise _bad("each id must be a positive integer")
        return ids


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object naming a field twice is refused: which of the two would
    be obeyed is not something an operator should have to guess."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a field is given twice")
    return found


def _body(request: server.Request) -> Body:
    raw = request.content.getvalue()
    try:
        value = codec.decode(raw)
        # orjson keeps the last of a repeated key; the stdlib can tell.
        if b'"' in raw and isinstance(value, dict):
            json.loads(raw, object_pairs_hook=_unique)
    except codec.DecodeError:
        raise _bad("the body is not JSON") from None
    except ValueError as e:
        raise _bad(f"the body is not usable JSON: {e}") from None
    if not isinstance(value, dict):
        raise _bad("the body must be a JSON object")
    return Body(value)


def _no_body(request: server.Request) -> None:
    """GET and DELETE take none; one sent anyway is ignored."""


def _query(request: server.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    raw = request.uri.partition(b"?")[2]
    if not raw:
        return {}
    try:
        fields = parse_qs(
            raw.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=True,
            max_num_fields=len(allowed) + 1,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError):
        raise _bad("the query is not understood") from None
    found: dict[str, str] = {}
    for key, values in fields.items():
        if key not in allowed:
            raise _bad(f"unknown query parameter {printable(key, 40)!r}")
        if len(values) != 1:
            raise _bad(f"{key} given more than once")
        found[key] = values[0]
    return found


def _sanction_id(segment: str) -> str:
    """A ban's or mute's id as the path names it (`b-...`, `m-...`)."""
    if not segment or len(segment) > 100 or not segment.isprintable():
        raise _Answer(404, "no such sanction")
    return segment


# -- the endpoints --

Handler = Callable[..., Any]


class AdminAPI:
    """Authenticates, routes and checks requests; one per admin site."""

    def __init__(
        self, moderator: Any, tokens: Tokens, reactor: Any, metrics: Metrics
    ) -> None:
        self.moderator = moderator
        self.tokens = tokens
        self.reactor = reactor
        self.metrics = metrics
        self.auth_log = LogBudget(reactor, log, AUTH_LOG_LINES, AUTH_LOG_PERIOD)
        self.history = HistoryActions(moderator)
        self.streams = 0  # exports and backups being streamed now
        # path (None: any one segment, handed to the handler) -> method -> handler
        self.routes: dict[tuple[str | None, ...], dict[bytes, Handler]] = {
            ("users",): {b"GET": self.users},
            ("kick",): {b"POST": self.kick},
            ("bans",): {b"GET": self.bans, b"POST": self.ban},
            ("bans", None): {b"DELETE": self.unban},
            ("mutes",): {b"GET": self.mutes, b"POST": self.mute},
            ("mutes", None): {b"DELETE": self.unmute},
            ("messages", "delete"): {b"POST": self.delete},
            ("slow-mode",): {b"GET": self.slow_modes, b"PUT": self.slow_mode},
            ("announce",): {b"POST": self.announce},
            ("reserved",): {b"GET": self.reserved, b"POST": self.reserve},
            ("reserved", None): {b"DELETE": self.unreserve},
            ("tokens",): {b"POST": self.token},
            ("verified",): {b"GET": self.verified},
            ("verified", None): {b"DELETE": self.unverify},
        }
        # The chat port's certificate (chatbox.endpoints.ServedCertificate),
        # set by tap when --tls-cert is given.
        self.tls: Any = None
        self.routes[("tls", "reload")] = {b"POST": self.tls_reload}
        self.routes.update(self._history_routes())

    # -- one request --

    def handle(self, request: server.Request) -> bytes | int:
        operator = self._operator(request)
        if operator is None:
            request.setHeader(b"www-authenticate", b"Bearer")
            return self._reply(request, 401, {"error": UNAUTHORIZED})
        try:
            handler, arguments = self._route(request)
        except _Answer as answer:
            return self._refuse(request, answer)
        finished: list[object] = []
        request.notifyFinish().addBoth(finished.append)

        def answered(reply: tuple[int, dict[str, Any]] | object) -> None:
            if reply is STREAMED:  # the handler wrote and finished it
                return
            body = self._reply(request, *reply)
            if not finished:  # a client gone meanwhile reads nothing
                request.write(body)
                request.finish()

        def failed(failure: Failure) -> None:
            if request.startedWriting:  # a stream that broke midway
                _cut(request, failure)
                return
            body = self._failure(request, failure)
            if not finished:
                request.write(body)
                request.finish()

        # A refusal raised while checking the body arrives as a failure too.
        result = maybeDeferred(handler, operator, request, *arguments)
        result.addCallbacks(answered, failed)
        return server.NOT_DONE_YET

    def _operator(self, request: server.Request) -> str | None:
        headers = request.requestHeaders.getRawHeaders(b"authorization") or []
        why = None
        operator = None
        if not headers:
            why = "no Authorization header"
        elif len(headers) > 1:
            why = "more than one Authorization header"
        else:
            scheme, _, token = headers[0].strip().partition(b" ")
            token = token.strip()
            if scheme.lower() != b"bearer" or not token:
                why = "an Authorization header that is not 'Bearer TOKEN'"
            else:
                operator = self.tokens.operator(token)
                if operator is None:
                    why = "a token that is not in the token file"
        if operator is None:
            peer = _peer(request)
            if self.auth_log.allow(peer):
                log.warn(
                    "admin API: refused {method} {path} from {peer}: {why}",
                    method=printable(request.method, 20),
                    path=printable(request.path, 100),
                    peer=peer,
                    why=why,
                )
        return operator

    def _route(self, request: server.Request) -> tuple[Handler, list[str]]:
        raw = request.path.split(b"/")
        if len(raw) < 3 or raw[0] != b"" or raw[1] != b"v1":
            raise _Answer(404, "no such endpoint")
        try:
            segments = [unquote_to_bytes(s).decode("utf-8") for s in raw[2:]]
        except UnicodeDecodeError:
            raise _Answer(404, "no such endpoint") from None
        methods = self.routes.get(tuple(segments))
        arguments: list[str] = []
        if methods is None and len(segments) == 2 and segments[1]:
            methods = self.routes.get((segments[0], None))
            arguments = [segments[1]]
        if methods is None:
            raise _Answer(404, "no such endpoint")
        handler = methods.get(request.method)
        if handler is None:
            allowed = b", ".join(sorted(methods))
            raise _Answer(405, "method not allowed here", allow=allowed)
        return handler, arguments

    def _reply(self, request: server.Request, status: int, body: dict) -> bytes:
        self.metrics.admin_requests.labels(
            outcome=_OUTCOMES.get(status, "bad_request" if status < 500 else "error")
        ).inc()
        data = codec.encode(body)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-length", b"%d" % len(data))
        if request.method == b"HEAD":
            return b""  # the head alone: twisted.web logs a body it must drop
        return data

    def _refuse(self, request: server.Request, answer: _Answer) -> bytes:
        if answer.allow is not None:
            request.setHeader(b"allow", answer.allow)
        return self._reply(request, answer.status, {"error": answer.message})

    def _failure(self, request: server.Request, failure: Failure) -> bytes:
        error = failure.value
        if isinstance(error, _Answer):
            return self._refuse(request, error)
        if isinstance(error, MintError):
            return self._reply(request, 400, {"error": str(error)})
        if (
            isinstance(error, ModerationError)
            and isinstance(error.status, int)
            and (400 <= error.status < 500 or error.status == 503)
            and error.status != 401
        ):
            # The Moderator's refusals say what the operator can fix; a 503
            # says what could not be kept (a full disk, Redis away).
            return self._reply(request, error.status, {"error": str(error.message)})
        log.failure(
            "admin API: {method} {path} failed",
            failure,
            method=printable(request.method, 20),
            path=printable(request.path, 100),
        )
        return self._reply(
            request, 500, {"error": "internal error; see the server log"}
        )

    # -- the endpoints: each returns (status, body) or a Deferred of one --

    def users(self, operator: str, request: server.Request) -> tuple[int, dict]:
        room = _query(request, ("room",)).get("room")
        return 200, {"users": self.moderator.users(room)}

    def kick(self, operator: str, request: server.Request) -> Deferred:
        _no_query(request)
        body = _body(request)
        name = body.string("name", limit=1000)
        room = body.room(None)
        reason = body.reason()
        body.done()
        kicked = self.moderator.kick(operator, name, room, reason)
        return kicked.addCallback(lambda count: (200, {"kicked": count}))

    def bans(self, operator: str, request: server.Request) -> tuple[int, dict]:
        _no_query(request)
        return 200, {"bans": self.moderator.sanctions("ban")}

    def mutes(self, operator: str, request: server.Request) -> tuple[int, dict]:
        _no_query(request)
        return 200, {"mutes": self.moderator.sanctions("mute")}

    def ban(self, operator: str, request: server.Request) -> Deferred:
        return self._sanction(operator, request, "ban")

    def mute(self, operator: str, request: server.Request) -> Deferred:
        return self._sanction(operator, request, "mute")

    def _sanction(self, operator: str, request: server.Request, kind: str) -> Deferred:
        _no_query(request)
        body = _body(request)
        name = body.string("name", required=False, limit=1000)
        address = body.string("address", required=False, limit=100)
        if (name is None) == (address is None):
            raise _bad("give either name or address")
        target, value = ("name", name) if address is None else ("address", address)
        if not value:
            raise _bad(f"{target} cannot be empty")
        reason = body.reason()
        duration = body.number("duration", 0, MAX_DURATION, above=True)
        if kind == "mute" and duration is None:
            raise _bad("a mute needs a duration (seconds)")
        room = body.room(None)
        force = body.flag("force")
        body.done()
        made = self.moderator.sanction(
            operator,
            kind,
            target,
            value,
            reason,
            duration,
            room,
            force,
            _peer(request),
        )
        return made.addCallback(lambda sanction: (201, {kind: sanction}))

    def unban(self, operator: str, request: server.Request, segment: str) -> Deferred:
        return self._lift(operator, request, "ban", segment)

    def unmute(self, operator: str, request: server.Request, segment: str) -> Deferred:
        return self._lift(operator, request, "mute", segment)

    def _lift(
        self, operator: str, request: server.Request, kind: str, segment: str
    ) -> Deferred:
        _no_query(request)
        lifted = self.moderator.lift(operator, kind, _sanction_id(segment))
        return lifted.addCallback(lambda sanction: (200, {"lifted": sanction}))

    def delete(self, operator: str, request: server.Request) -> Deferred:
        _no_query(request)
        body = _body(request)
        room = body.room("")
        if "ids" in body.value and "name" in body.value:
            raise _bad("give either ids or name")
        if "ids" in body.value:
            ids = body.ids()
            reason = body.reason()
            body.done()
            deleted = self.moderator.delete(operator, room, ids, reason)
        else:
            name = body.string("name", limit=1000)
            since = body.integer("since")
            until = body.integer("until")
            if since is not None and until is not None and since > until:
                raise _bad("since is after until")
            reason = body.reason()
            body.done()
            deleted = self.moderator.delete_by(
                operator, room, name, since, until, reason
            )
        return deleted.addCallback(lambda ids: (200, {"deleted": ids}))

    def slow_modes(self, operator: str, request: server.Request) -> tuple[int, dict]:
        _no_query(request)
        return 200, {"rooms": self.moderator.slow_modes()}

    def slow_mode(self, operator: str, request: server.Request) -> Deferred:
        _no_query(request)
        body = _body(request)
        room = body.room("")
        seconds = body.number("seconds", 0, MAX_SLOW_MODE, above=False)
        if seconds is None:
            raise _bad("seconds is required (0 turns slow mode off)")
        body.done()
        done = self.moderator.set_slow_mode(operator, room, seconds)
        return done.addCallback(lambda _: (200, {"room": room, "seconds": seconds}))

    def announce(self, operator: str, request: server.Request) -> Deferred:
        _no_query(request)
        body = _body(request)
        text = body.string("text", limit=MAX_BODY)
        everywhere = body.flag("all_rooms")
        room = body.room(None)
        if everywhere and room is not None:
            raise _bad("give either room or all_rooms")
        if not everywhere and room is None:
            room = ""
        body.done()
        posted = self.moderator.announce(operator, room, everywhere, text)
        return posted.addCallback(lambda where: (200, {"posted": where}))

    def reserved(self, operator: str, request: server.Request) -> tuple[int, dict]:
        _no_query(request)
        return 200, {"reserved": self.moderator.reserved()}

    def reserve(self, operator: str, request: server.Request) -> Deferred:
        _no_query(request)
        body = _body(request)
        pattern = body.string("pattern", limit=1000)
        body.done()
        done = self.moderator.reserve(operator, pattern)
        return done.addCallback(lambda _: (201, {"reserved": pattern}))

    def unreserve(
        self, operator: str, request: server.Request, pattern: str
    ) -> Deferred:
        _no_query(request)

        def answered(removed: bool) -> tuple[int, dict]:
            if not removed:
                raise _Answer(404, "no such reserved pattern")
            return 200, {"unreserved": pattern}

        return self.moderator.unreserve(operator, pattern).addCallback(answered)

    def token(self, operator: str, request: server.Request) -> Deferred:
        _no_query(request)
        body = _body(request)
        name = body.string("name", limit=1000)
        if not is_valid_name(name):
            raise _bad("name is not a valid nickname")
        roles = _names(body, "roles", len(ROLES))
        for role in roles or ():
            if role not in ROLES:
                raise _bad(
                    f"{printable(role, 40)!r} is not a role; roles: "
                    + ", ".join(sorted(ROLES))
                )
        rooms = _names(body, "rooms", MAX_TOKEN_ROOMS)
        days = body.integer("days")
        if days is None:
            days = DEFAULT_DAYS
        elif not 1 <= days <= MAX_DAYS:
            raise _bad(f"days must be 1 to {MAX_DAYS}")
        body.done()
        # The Moderator answers the reply's shape: {"token", "name",
        # "rooms", "roles", "expires"}.
        minted = maybeDeferred(
            self.moderator.mint, operator, name, roles or [], rooms, days
        )
        return minted.addCallback(lambda answer: (201, answer))

    def verified(self, operator: str, request: server.Request) -> tuple[int, dict]:
        _no_query(request)
        return 200, {"verified": self.moderator.verified_names()}

    def unverify(self, operator: str, request: server.Request, name: str) -> Deferred:
        _no_query(request)

        def answered(removed: object) -> tuple[int, dict]:
            if removed is False:
                raise _Answer(404, "no such verified nickname")
            return 200, {"unverified": name}

        done = maybeDeferred(self.moderator.unverify, operator, name)
        return done.addCallback(answered)

    def tls_reload(self, operator: str, request: server.Request) -> Deferred:
        """Read --tls-cert/--tls-key again, as SIGHUP does (the same path):
        200 with the certificate now served, or 409 with why the files
        cannot be, the previous pair staying in force."""
        _no_query(request)
        if request.content.getvalue().strip():
            _body(request).done()  # nothing to give; a field is a mistake
        if self.tls is None:
            raise _Answer(
                409,
                "this server has no --tls-cert/--tls-key to reload (an ssl: "
                "--port endpoint is read once, at start)",
            )

        def reloaded(result: Any) -> tuple[int, dict]:
            _audit.info(
                "audit: {operator} tls-reload {said}",
                operator=printable(operator, 100),
                said=result.info.said(),
            )
            return 200, {**result.info.as_json(), "changed": result.changed}

        def refused(failure: Failure) -> None:
            failure.trap(CertificateError)
            _audit.info(
                "audit: {operator} tls-reload refused: {why}",
                operator=printable(operator, 100),
                why=str(failure.value),
            )
            raise _Answer(409, str(failure.value))

        done = self.tls.reload(f"asked by operator {printable(operator, 100)}")
        return done.addCallbacks(reloaded, refused)

    # -- history: export, backup, import, erasure (chatbox.admin.history) --

    def _history_routes(self) -> dict[tuple[str | None, ...], dict[bytes, Handler]]:
        return {
            ("export",): {b"GET": self.export},
            ("backup",): {b"GET": self.backup},
            ("import",): {b"POST": self.import_},
            ("erase",): {b"POST": self.erase},
        }

    def export(self, operator: str, request: server.Request) -> Deferred:
        query = _query(request, ("room", "nickname", "since", "until"))
        room = query.get("room")
        name = query.get("nickname")
        if name is not None and not is_valid_name(name):
            raise _bad("nickname is not a nickname")
        since = _millis(query, "since")
        until = _millis(query, "until")
        if since is not None and until is not None and since > until:
            raise _bad("since is after until")
        # A room that is not there is refused while a status can say so.
        checked = self.history.check_room(room)

        def lines(sink: _Stream) -> Deferred:
            return self.history.export(operator, sink, room, name, since, until)

        return checked.addCallback(lambda _: self._stream(request, lines))

    def backup(self, operator: str, request: server.Request) -> Deferred:
        _no_query(request)
        now_ms = int(self.reactor.seconds() * 1000)

        def lines(sink: _Stream) -> Deferred:
            return self.history.backup(operator, sink, now_ms)

        return self._stream(request, lines)

    def _stream(
        self, request: server.Request, produce: Callable[["_Stream"], Deferred]
    ) -> Deferred:
        """Answer 200 with JSON Lines written by `produce` as the client
        reads them; once a line is sent a failure can only cut the
        connection (the client sees no end of the chunked body)."""
        if self.streams >= MAX_STREAMS:
            raise _Answer(
                429,
                f"{MAX_STREAMS} exports or backups are running; wait for one "
                "to finish (or stop the one nobody reads)",
            )
        self.streams += 1
        self.metrics.admin_requests.labels(outcome="ok").inc()
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/x-ndjson")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        sink = _Stream(request, self.reactor)
        done = produce(sink)

        def finished(_: object) -> object:
            self.streams -= 1
            sink.finish()
            return STREAMED

        def stopped(failure: Failure) -> object:
            self.streams -= 1
            sink.close()
            if failure.check(Stopped):
                return STREAMED  # the reader left: nothing to say to it
            return failure

        return done.addCallbacks(finished, stopped)

    def import_(self, operator: str, request: server.Request) -> Deferred:
        room = _query(request, ("room",)).get("room", "")
        body = _body(request)
        given = body.get("messages")
        body.done()
        if not isinstance(given, list) or not given:
            raise _bad("messages must be a non-empty list")
        if len(given) > MAX_IMPORT:
            raise _bad(f"at most {MAX_IMPORT} messages at once")
        try:
            checked = [
                checked_import(fields, f"message #{index + 1}")
                for index, fields in enumerate(given)
            ]
        except ModerationError as e:
            raise _bad(e.message) from None
        done = self.history.import_messages(operator, room, checked)
        return done.addCallback(lambda ids: (200, {"imported": ids}))

    def erase(self, operator: str, request: server.Request) -> Deferred:
        _no_query(request)
        body = _body(request)
        name = body.string("name", limit=1000)
        if not is_valid_name(name):
            raise _bad("name is not a nickname")
        room = body.room(None)
        since = body.integer("since")
        until = body.integer("until")
        if since is not None and until is not None and since > until:
            raise _bad("since is after until")
        reason = body.reason()
        body.done()
        done = self.history.erase(operator, name, room, since, until, reason)
        return done.addCallback(
            lambda counts: (200, {"erased": counts, "total": sum(counts.values())})
        )


MAX_TOKEN_ROOMS = 100


def _names(body: Body, key: str, most: int) -> list[str] | None:
    """A list of 1..`most` strings (rooms, roles), or None if absent; the
    Moderator checks what they name."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= most:
        raise _bad(f"{key} must be a list of 1 to {most} names, or left out")
    if not all(isinstance(item, str) and len(item) <= 1000 for item in value):
        raise _bad(f"{key} must hold strings")
    return value


def _no_query(request: server.Request) -> None:
    _query(request, ())


def _peer(request: server.Request) -> str:
    """The client's IP address as text ("" on a UNIX socket)."""
    return getattr(request.getClientAddress(), "host", "") or ""


# -- HTTP below the resource: bodies, deadlines, connection count --


class AdminRequest(server.Request):
    _received = 0

    def gotLength(self, length: int | None) -> None:
        # Bodies are capped at MAX_BODY, so memory always does; twisted.web
        # would open a temporary file for a chunked one, on the reactor.
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY:
            self.channel.refuse(BODY_TOO_LARGE, linger=True)
            return
        self.content.write(data)


class AdminChannel(http.HTTPChannel):
    # Private hooks, the same as chatbox.web.channel.ChatChannel's (and
    # checked by tests/unit/test_private_hooks.py there): HTTPChannel's
    # steps allHeadersReceived, allContentReceived, requestDone,
    # lineLengthExceeded, and its `length` and `_command`.
    maxHeaders = 100
    totalHeadersSize = 16 * 1024
    MAX_LENGTH = 8 * 1024
    site: "AdminSite"

    def __init__(self) -> None:
        super().__init__()
        self.refused = False
        self.serving = False
        self._deadline: IDelayedCall | None = None
        self._abort: IDelayedCall | None = None
        self._discard: int | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.site.opened(self):
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.site.reactor.callLater(REQUEST_DEADLINE, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if hasattr(self, "_command"):  # a request had begun
            self.site.api.metrics.admin_requests.labels(outcome="bad_request").inc()
        self.refuse(TIMED_OUT)

    def refuse(self, response: bytes, linger: bool = False) -> None:
        """Answer `response` and close, handling nothing more. With `linger`
        (a body still arriving), only our side closes and up to
        LINGER_BYTES more are read and dropped, so the client reads the
        answer rather than a reset."""
        if self.refused or self.transport is None:
            return
        self.refused = True
        self.persistent = False
        self._disarm()
        if response is BODY_TOO_LARGE:
            self.site.api.metrics.admin_requests.labels(outcome="bad_request").inc()
        self.transport.write(response)
        if linger and not ISSLTransport.providedBy(self.transport):
            self._discard = LINGER_BYTES
            self.transport.loseWriteConnection()
        else:
            self.transport.loseConnection()
        self._abort = self.site.reactor.callLater(
            CLOSE_GRACE, self.transport.abortConnection
        )

    def dataReceived(self, data: bytes) -> None:
        if self._discard is not None:
            self._discard -= len(data)
            if self._discard < 0:
                self.transport.abortConnection()
        elif not self.refused:
            super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if not self.refused:
            super().rawDataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(HEAD_TOO_LARGE if hasattr(self, "_command") else URI_TOO_LONG)

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > MAX_BODY:
            self.refuse(BODY_TOO_LARGE, linger=True)
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if self.refused:
            return
        self._disarm()
        self.serving = True
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self.serving = False
        super().requestDone(request)
        if self.persistent and not self.refused:
            self._arm()

    def timeoutConnection(self) -> None:
        # No idle timer is set (the deadline above does the job); should one
        # be, it must not log a line per connection.
        self.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._disarm()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self.site.closed(self)
        super().connectionLost(reason)


class AdminResource(Resource):
    isLeaf = True

    def __init__(self, api: AdminAPI) -> None:
        super().__init__()
        self.api = api

    def render(self, request: server.Request) -> bytes | int:
        return self.api.handle(request)


class AdminSite(server.Site):
    protocol = AdminChannel
    requestFactory = AdminRequest
    displayTracebacks = False

    def __init__(self, api: AdminAPI) -> None:
        super().__init__(AdminResource(api), timeout=None)
        self.api = api
        self.reactor = api.reactor
        self.noisy = False
        self.channels: dict[AdminChannel, None] = {}  # in order of arrival

    def opened(self, channel: AdminChannel) -> bool:
        """Count a new connection; False if it was refused. Past
        MAX_CONNECTIONS the oldest one not being served makes room."""
        if len(self.channels) >= MAX_CONNECTIONS:
            idle = next((c for c in self.channels if not c.serving), None)
            if idle is None:
                channel.refuse(BUSY)
                return False
            self.closed(idle)
            idle.transport.abortConnection()
        self.channels[channel] = None
        return True

    def closed(self, channel: AdminChannel) -> None:
        self.channels.pop(channel, None)

    def log(self, request: server.Request) -> None:
        """No access log line per request: it would quote the path and the
        peer for every probe. Refusals are logged, within a budget."""

    def stopFactory(self) -> None:
        self.api.auth_log.flush()
        super().stopFactory()


def make_admin_site(
    moderator: Any, tokens: Tokens, reactor: Any, metrics: Metrics
) -> AdminSite:
    """The admin listener's factory, for a ListenerService on --admin-port."""
    return AdminSite(AdminAPI(moderator, tokens, reactor, metrics))


# -- streamed answers: export and backup --

# What a streaming handler's Deferred fires with: it answered by itself.
STREAMED = object()


def _millis(query: dict[str, str], key: str) -> int | None:
    value = query.get(key)
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 16:
        raise _bad(f"{key} must be epoch milliseconds")
    return int(value)


def _cut(request: server.Request, failure: Failure) -> None:
    """A stream failed after its first line: logged, and the connection
    cut, so the client cannot take a part for the whole."""
    log.failure(
        "admin API: {path} failed while streaming",
        failure,
        path=printable(request.path, 100),
    )
    transport = getattr(request.channel, "transport", None)
    if transport is not None:
        transport.abortConnection()


@implementer(IPushProducer)
class _Stream:
    """The response as chatbox.admin.history's sink: a streaming producer
    registered with the request, paused and resumed by the connection as
    the client reads (twisted.web's producer/consumer), so memory holds what
    one page wrote, never the history. The request's deadline was disarmed
    when its body arrived: a long export that flows is never cut; one whose
    reader stalls for STALL_DEADLINE is."""

    def __init__(self, request: server.Request, reactor: Any) -> None:
        self.request = request
        self.reactor = reactor
        self.paused = False
        self.gone = False
        self._waiting: Deferred | None = None
        self._stall: IDelayedCall | None = None
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(lambda _: self.stopProducing())

    def write(self, data: bytes) -> None:
        if not self.gone:
            self.request.write(data)

    def drained(self) -> Deferred:
        if self.gone:
            return fail(Stopped())
        if not self.paused:
            return succeed(None)
        self._waiting = Deferred()
        return self._waiting

    def pauseProducing(self) -> None:
        self.paused = True
        if self._stall is None:
            self._stall = self.reactor.callLater(STALL_DEADLINE, self._stalled)

    def resumeProducing(self) -> None:
        self.paused = False
        self._unstall()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        if self.gone:
            return
        self.gone = True
        self._unstall()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(Stopped())

    def _unstall(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        log.info("admin API: a stream's reader stalled; cut off")
        self.stopProducing()
        transport = getattr(self.request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def finish(self) -> None:
        self.close()
        if not self.gone:
            self.gone = True
            self.request.finish()

    def close(self) -> None:
        self._unstall()
        # A request whose connection was lost has no channel left to
        # unregister from.
        if self.request.producer is not None and self.request.channel is not None:
            self.request.unregisterProducer()
