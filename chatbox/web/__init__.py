"""The HTTP side of the chat port: the page, the socket, health and metrics.

One port serves everything, as v2 users expect `ws://HOST:PORT`:

- any request with `Upgrade: websocket` is the chat socket (docs/PROTOCOL.md),
  in the room its path names (chatbox.chat.roomnames);
- `GET /` is the bundled browser client, `GET /NAME` the same page in room
  NAME, `/static/...` its files;
- `GET /rooms` lists the rooms the operator chose to list (JSON);
- `/healthz` says whether the server can do its job (JSON; 503 if not);
- `/metrics` is Prometheus' text format.

Every connection passes chatbox.web.admission first (counted from accept,
capped, timed), then chatbox.web.channel (bodies, head sizes, odd paths).
"""

import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from autobahn.twisted.resource import WebSocketResource
from prometheus_client.twisted import MetricsResource
from twisted.python.failure import Failure
from twisted.web import static
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from chatbox.chat.roomnames import DEFAULT, NotARoom, room_of_path
from chatbox.limits import client_address
from chatbox.web.admission import Admission
from chatbox.web.channel import ChatChannel, ChatRequest
from chatbox.web.handshake import handshake_refusal
from chatbox.web.responses import plain
from chatbox.wire import codec
from chatbox.wire.factory import ChatFactory
from chatbox.wire.protocol import NEEDS_TOKEN, handshake_tokens

__all__ = ["make_site"]

STATIC = resources.files("chatbox.web") / "static"
# Served at the top, so never rooms: chatbox.chat.roomnames reserves them.
CHILDREN = (b"static", b"healthz", b"metrics", b"rooms")


def _room_refusal(
    factory: ChatFactory, request: Request, socket: bool
) -> tuple[int, str] | None:
    """Why the page or socket at the request's path names no room one may
    enter, if so.

    An address that keeps asking for rooms that are not there is told to
    wait (429) for every unlisted room, there or not, so that guessing
    unlisted names is slow and learns nothing while it waits. What is
    public costs nothing and is never refused so: the default room, listed
    rooms, names no room can have, and every path of a server without
    named rooms (where each is the default room, as in v2). One making
    rooms under --rooms open makes them at ROOMS_MADE_RATE, and a refusal
    for that counts as a guess too, or it would tell a room that exists
    from a name that does not."""
    rooms = factory.rooms
    text = request.path.decode("latin-1")
    try:
        name = rooms.socket_room(text) if socket else room_of_path(text)
    except NotARoom as e:
        return 404, str(e)
    if not rooms.named or name == DEFAULT or name in rooms.policy.listed:
        refused = rooms.refusal(name)
        return None if refused is None else (refused.status, str(refused))
    key = getattr(request.channel.transport, "key", None) or "-"
    now = factory.reactor.seconds()
    guesses = factory.room_guesses
    if not guesses.left(key, now):
        return 429, "too many rooms asked for that are not there; try again later"
    refused = rooms.refusal(name)
    if refused is not None:
        if refused.status == 404:
            guesses.take(key, now)
        return refused.status, str(refused)
    if socket and rooms.is_new(name) and not factory.rooms_made.take(key, now):
        guesses.take(key, now)
        return 429, "making rooms too often from your address; try again later"
    return None


def ban_refusal(
    factory: ChatFactory, request: Request, room: str | None
) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
    """403 for an address an operator banned (chatbox.chat.moderation), from
    the whole server or from `room` (None: a path naming no room), with
    Retry-After when the ban ends. The reason is the operator's, in both of
    the page's languages, since the page itself is refused too."""
    peer = request.getClientAddress()
    address = client_address(
        getattr(peer, "host", str(peer)),
        (request.getHeader(b"x-forwarded-for") or b"").decode("latin-1") or None,
        factory.limits.trusted_proxies,
    )
    now = factory.now_ms()
    ban = factory.moderation.on_address("ban", address, room, now)
    if ban is None:
        return None
    factory.metrics.moderation_refusals.labels("address banned").inc()
    headers = []
    if ban.expires is None:
        until, vi_until = "for good", "vĩnh viễn"
    else:
        wait = max(1, -(-(ban.expires - now) // 1000))
        headers.append((b"retry-after", b"%d" % wait))
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ban.expires / 1000))
        until, vi_until = f"until {stamp}", f"đến {stamp}"
    why = f": {ban.reason}" if ban.reason else ""
    text = (
        f"This address is banned from this chat {until}{why}\n"
        f"Địa chỉ này bị cấm khỏi cuộc trò chuyện {vi_until}{why}"
    )
    return 403, text, headers


def token_refusal(
    factory: ChatFactory, request: Request
) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
    """401 for a handshake without a sign-in token under --auth required,
    before any WebSocket: a page opened without its link learns why,
    rather than seeing a socket open and close. Whether a token is there is
    decided as the connection itself decides it (handshake_tokens); the
    token is checked there, once the handshake is known to be good."""
    if factory.auth_mode != "required":
        return None
    query = request.uri.partition(b"?")[2].decode("latin-1")
    authorization = request.requestHeaders.getRawHeaders(b"authorization")
    found = handshake_tokens(
        parse_qs(query),
        b",".join(authorization).decode("latin-1") if authorization else None,
    )
    if found:
        return None
    return 401, NEEDS_TOKEN, [(b"www-authenticate", b'Bearer realm="chatbox"')]


def _is_websocket(request: Request) -> bool:
    upgrade = request.getHeader(b"upgrade") or b""
    return b"websocket" in upgrade.lower()


class ChatSocket(WebSocketResource):
    def __init__(self, factory: ChatFactory) -> None:
        super().__init__(factory)
        self.factory = factory

    def render(self, request: Request) -> Any:
        limits = self.factory.limits
        refusal = handshake_refusal(
            request, limits.allowed_origins, self.factory.versions
        )
        if refusal is None:
            # Decided here, not in onConnect, where Autobahn would log lines
            # for each refusal (chatbox.web.handshake).
            room_refusal = _room_refusal(self.factory, request, socket=True)
            if room_refusal is not None:
                refusal = (*room_refusal, [])
            else:
                room = self.factory.rooms.socket_room(request.path.decode("latin-1"))
                refusal = ban_refusal(self.factory, request, room)
                if refusal is None:
                    refusal = token_refusal(self.factory, request)
        if refusal is not None:
            code, reason, headers = refusal
            if self.factory.admission is not None:
                # The Gate's key is the client's address, as admission counts
                # it. One line of the reason: the summary is one log line.
                address = getattr(request.channel.transport, "key", None) or "-"
                self.factory.admission.refusals.note(address, reason.split("\n")[0])
            for name, value in headers:
                request.setHeader(name, value)
            _close_after(request)
            return plain(request, code, reason)
        # twisted.web would time the connection out as an idle HTTP channel
        # (after 12 hours) even though the WebSocket has taken it over.
        request.channel.setTimeout(None)
        return super().render(request)


class Health(Resource):
    isLeaf = True

    def __init__(self, factory: ChatFactory) -> None:
        super().__init__()
        self.factory = factory

    def render_GET(self, request: Request) -> bytes:
        room = self.factory.room
        rooms = self.factory.rooms
        failing = sum(1 for _, loaded in rooms.loaded() if not loaded.healthy)
        healthy = room.healthy and not failing
        request.setResponseCode(200 if healthy else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return codec.encode(
            {
                "status": "up" if healthy else "failing",
                "connections": len(self.factory.connections),
                "registered": rooms.registered_count(),
                "history": room.message_count(),
                **room.health(),
                "rooms": {
                    "open": rooms.open_count(),
                    "loaded": rooms.loaded_count(),
                    "failing": failing,
                },
            }
        )

    def render_HEAD(self, request: Request) -> bytes:
        """Without it twisted.web fakes a HEAD with GET and logs a line."""
        self.render_GET(request)
        return b""


class RoomList(Resource):
    """GET /rooms: the listed rooms, for the page's switcher and for a
    school's own portal. Unlisted rooms are never named here."""

    isLeaf = True

    def __init__(self, factory: ChatFactory) -> None:
        super().__init__()
        self.factory = factory

    def render_GET(self, request: Request) -> object:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")

        def listed(rooms: list[dict[str, object]]) -> None:
            request.write(codec.encode({"rooms": rooms}))
            request.finish()

        def failed(failure: Failure) -> None:
            request.setResponseCode(503)
            request.write(codec.encode({"error": "room list unavailable"}))
            request.finish()

        self.factory.rooms.listing().addCallbacks(listed, failed)
        return NOT_DONE_YET

    def render_HEAD(self, request: Request) -> bytes:
        """Without it twisted.web fakes a HEAD with GET and logs a line."""
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return b""


class Root(Resource):
    def __init__(self, factory: ChatFactory) -> None:
        super().__init__()
        self.factory = factory
        self.socket = ChatSocket(factory)
        self.page = static.File(str(STATIC / "index.html"), defaultType="text/html")
        # Read once at start-up, to answer a missing room's 404 with.
        self.missing_page = (STATIC / "index.html").read_bytes()
        self.putChild(b"static", static.File(str(STATIC)))
        self.putChild(b"healthz", Health(factory))
        self.putChild(b"metrics", MetricsResource(factory.metrics.registry))
        self.putChild(b"rooms", RoomList(factory))

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if _is_websocket(request):
            return self.socket  # in the room its path names
        if path in (b"healthz", b"metrics"):  # never refused: monitoring
            if request.postpath:
                # Exactly these paths: a proxy that hides /metrics from the
                # internet must not find it again at /metrics/ or /metrics/x
                # (both are leaves, which would answer any path below them).
                return _Answer(404, b"not found\n")
            return super().getChildWithDefault(path, request)
        if path == b"" or path in self.children:
            banned = ban_refusal(
                self.factory, request, DEFAULT if path == b"" else None
            )
            if banned is not None:
                code, text, headers = banned
                return _Answer(code, text.encode() + b"\n", headers=tuple(headers))
            if path == b"":
                return self.page
            return super().getChildWithDefault(path, request)
        return self._room_page(request)

    def _room_page(self, request: Request) -> Resource:
        """The page in the room the path names: at its one canonical path
        (a 301 from any other spelling, so the page's own location is the
        room's share link), or 404 for a room that cannot be entered."""
        refusal = _room_refusal(self.factory, request, socket=False)
        if refusal is not None:
            code, reason = refusal
            if code == 404 and self.factory.rooms.named:
                # The page itself, which finds its room refused and says so
                # in the reader's language, with the way to the others.
                return _Answer(code, self.missing_page, b"text/html; charset=utf-8")
            return _Answer(code, reason.encode() + b"\n")
        name = room_of_path(request.path.decode("latin-1"))
        banned = ban_refusal(self.factory, request, name)
        if banned is not None:
            code, text, headers = banned
            return _Answer(code, text.encode() + b"\n", headers=tuple(headers))
        canonical = f"/{name}".encode() if name != DEFAULT else b"/"
        if request.path != canonical:
            query = request.uri.partition(b"?")[2]
            where = canonical + (b"?" + query if query else b"")
            moved = b"moved to " + canonical + b"\n"
            return _Answer(301, moved, headers=((b"location", where),))
        request.postpath = []  # the page is the whole answer
        return self.page


def _close_after(request: Request) -> None:
    """End the connection with this refusal: one that keeps asking for
    rooms must reconnect for each ask, under admission's --connection-rate,
    instead of sending thousands down one keep-alive connection."""
    request.setHeader(b"connection", b"close")
    request.channel.persistent = False


class _Answer(Resource):
    """An answer decided before rendering: a refusal, a redirect, or the
    page for a room that is not there. A HEAD gets the head alone, so
    twisted.web writes no log line for it (it does, quoting the whole URI,
    for each HEAD that renders a body: a log flood at one request away)."""

    isLeaf = True

    def __init__(
        self,
        code: int,
        body: bytes,
        content_type: bytes = b"text/plain; charset=utf-8",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__()
        self.code = code
        self.body = body
        self.head = ((b"content-type", content_type), *headers)

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self.code)
        if self.code >= 400:
            _close_after(request)
        request.setHeader(b"cache-control", b"no-store")
        for name, value in self.head:
            request.setHeader(name, value)
        if request.method == b"HEAD":
            request.setHeader(b"content-length", b"%d" % len(self.body))
            return b""
        return self.body


class ChatSite(Site):
    protocol = ChatChannel  # plain HTTP/1.1: chatbox offers no HTTP/2
    requestFactory = ChatRequest

    def log(self, request: Request) -> None:
        """No access log line per request: a flood would write the log faster
        than its own bytes. chatbox logs what matters (connections, refusals
        as a summary) itself."""


def make_site(factory: ChatFactory) -> Admission:
    """The chat port's factory: the Site behind Admission, which counts,
    caps and times every connection from accept (factory.limits)."""
    site = ChatSite(Root(factory), timeout=None)
    site.noisy = False
    admission = Admission(site, factory.limits, factory.reactor)
    admission.noisy = False
    factory.admission = admission
    return admission
