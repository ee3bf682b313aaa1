"""The chat room: every connection, the ARNS registry, and broadcast.

The factory is the one owner of who is connected and under which nickname.
Events are encoded and framed once (`prepareMessage`) and the same frame is
written to every recipient.
"""

from collections import Counter

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from chatbox import __version__, codec, messages
from chatbox.arns import Registry
from chatbox.clock import Timestamps
from chatbox.limits import Limits, origin_allowed
from chatbox.metrics import Metrics
from chatbox.protocol import ChatProtocol
from chatbox.store import DurableStore

__all__ = ["ChatFactory"]

CLOSE_GOING_AWAY = 1001


class ChatFactory(WebSocketServerFactory):
    protocol = ChatProtocol
    logger = Logger()

    def __init__(
        self,
        store: DurableStore,
        reactor: IReactorTime,
        history_cap: int = 10_000,
        limits: Limits | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(server=f"chatbox/{__version__}", reactor=reactor)
        self.store = store
        self.history_cap = history_cap
        self.timestamps = Timestamps(reactor.seconds)
        self.limits = limits or Limits()
        self.registry = Registry()
        self.connections: set[ChatProtocol] = set()
        self._per_address: Counter[str] = Counter()
        self.bytes_out = 0  # every byte written to clients; read by /metrics
        self.metrics = metrics or Metrics()
        self.metrics.observe(
            connections=lambda: len(self.connections),
            registered=lambda: len(self.registry),
            messages=lambda: len(self.store.history),
            bytes_out=lambda: self.bytes_out,
        )
        self._all_closed: list[Deferred[None]] = []
        self.closing = False

    # -- membership --

    def connection_made(self, connection: ChatProtocol) -> None:
        self.connections.add(connection)

    def admit(self, connection: ChatProtocol, address: str, origin: str | None) -> None:
        """Let a handshake through, or refuse it with an HTTP status."""
        limits = self.limits
        refusal = None
        if not origin_allowed(origin, limits.allowed_origins):
            refusal = ConnectionDeny(403, "origin not allowed")
        elif limits.max_connections and len(self.connections) > limits.max_connections:
            refusal = ConnectionDeny(503, "server full, try again later")
        elif (
            limits.max_connections_per_address
            and self._per_address[address] >= limits.max_connections_per_address
        ):
            refusal = ConnectionDeny(429, "too many connections from your address")
        if refusal is not None:
            self.logger.info(
                "refused connection from {address} (origin {origin}): {reason}",
                address=address,
                origin=origin,
                reason=refusal.reason,
            )
            raise refusal
        self._per_address[address] += 1

    def connection_lost(self, connection: ChatProtocol) -> None:
        self.connections.discard(connection)
        if connection.address is not None:
            self._per_address[connection.address] -= 1
            if not self._per_address[connection.address]:
                del self._per_address[connection.address]
        name = self.registry.release(connection)
        if name is None:
            self.logger.info("connection from {peer} closed", peer=connection.peer)
        else:
            self.logger.info("{name!r} left ({peer})", name=name, peer=connection.peer)
            if not self.closing:
                self.broadcast(messages.left(name, self.timestamps.now()))
        if not self.connections:
            waiters, self._all_closed = self._all_closed, []
            for waiter in waiters:
                waiter.callback(None)

    def register(self, connection: ChatProtocol, name: str) -> str:
        """Claim `name` and tell everyone else; raises NameTaken."""
        self.registry.claim(connection, name)
        timestamp = self.timestamps.now()
        self.broadcast(messages.joined(name, timestamp), exclude=connection)
        return timestamp

    def rename(self, connection: ChatProtocol, name: str) -> str:
        """Swap the connection's nickname and tell everyone else; raises NameTaken."""
        old = self.registry.rename(connection, name)
        timestamp = self.timestamps.now()
        self.broadcast(messages.renamed(old, name, timestamp), exclude=connection)
        return timestamp

    # -- sending to many --

    def broadcast(
        self, event: messages.Message, exclude: ChatProtocol | None = None
    ) -> None:
        """Send an event to every registered connection but `exclude`."""
        prepared = self.prepareMessage(codec.encode(event))
        for connection in self.registry.owners():
            if connection is not exclude:
                connection.deliver(prepared)

    def ping_everyone(self, interval: float) -> None:
        """v2's JSON keepalive, to every open connection, registered or not."""
        prepared = self.prepareMessage(codec.encode(messages.ping(interval)))
        for connection in list(self.connections):
            connection.deliver(prepared)

    # -- shutdown --

    def close_all(self, reason: str = "server shutting down") -> "Deferred[None]":
        """Close every connection with 1001; fires when all are gone.

        Autobahn drops a peer that does not answer the close within its close
        handshake timeout, so this always finishes.
        """
        if not self.connections:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._all_closed.append(done)
        for connection in list(self.connections):
            connection.close_with(CLOSE_GOING_AWAY, reason)
        return done

    def abort_all(self) -> None:
        """Drop whatever is still connected, without waiting for anyone."""
        for connection in list(self.connections):
            connection.transport.abortConnection()
