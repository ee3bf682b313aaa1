"""The HTTP side of the chat port: the page, the socket, health and metrics.

One port serves everything, as v2 users expect `ws://HOST:PORT`:

- any request with `Upgrade: websocket` is the chat socket (docs/PROTOCOL.md);
- `GET /` is the bundled browser client, `/static/...` its files;
- `/healthz` says whether the server can do its job (JSON; 503 if not);
- `/metrics` is Prometheus' text format.

Every connection passes chatbox.web.admission first (counted from accept,
capped, timed), then chatbox.web.channel (bodies, head sizes, odd paths).
"""

from importlib import resources
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from prometheus_client.twisted import MetricsResource
from twisted.web import pages, static
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from chatbox.web.admission import Admission
from chatbox.web.channel import ChatChannel, ChatRequest
from chatbox.web.handshake import handshake_refusal
from chatbox.wire import codec
from chatbox.wire.factory import ChatFactory

__all__ = ["make_site"]

STATIC = resources.files("chatbox.web") / "static"


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
        if refusal is not None:
            code, reason, headers = refusal
            if self.factory.admission is not None:
                # The Gate's key is the client's address, as admission counts it.
                address = getattr(request.channel.transport, "key", None) or "-"
                self.factory.admission.refusals.note(address, reason)
            request.setResponseCode(code)
            for name, value in headers:
                request.setHeader(name, value)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return reason.encode() + b"\n"
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
        healthy = room.healthy
        request.setResponseCode(200 if healthy else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return codec.encode(
            {
                "status": "up" if healthy else "failing",
                "connections": len(self.factory.connections),
                "registered": room.registered_count(),
                "history": room.message_count(),
                **room.health(),
            }
        )


class Root(Resource):
    def __init__(self, factory: ChatFactory) -> None:
        super().__init__()
        self.socket = ChatSocket(factory)
        self.page = static.File(str(STATIC / "index.html"), defaultType="text/html")
        self.putChild(b"static", static.File(str(STATIC)))
        self.putChild(b"healthz", Health(factory))
        self.putChild(b"metrics", MetricsResource(factory.metrics.registry))

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if _is_websocket(request):
            return self.socket  # The classic client connects to any path.
        if path == b"":
            return self.page
        return super().getChildWithDefault(path, request)

    def getChild(self, path: bytes, request: Request) -> Resource:
        return pages.notFound()  # Escapes what it shows, unlike the default.


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
