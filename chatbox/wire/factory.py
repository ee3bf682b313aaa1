"""This process's side of the chat: its connections, admission, and delivery.

The factory is the one owner of who is connected to this process. Which
rooms exist and are loaded belongs to chatbox.chat.rooms; who holds which
nickname and the history belong to each room (chatbox.chat.room), which may
be this process alone or a whole cluster. Events a room hands over are
encoded and framed once (`prepareMessage`) and the same frame is written to
every recipient in that room.
"""

from functools import partial
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from chatbox import __version__
from chatbox.chat.moderation import Moderation, SlowMode
from chatbox.chat.room import IRoom
from chatbox.chat.rooms import Rooms
from chatbox.limits import AddressBuckets, Limits, origin_allowed
from chatbox.logsafe import LogBudget
from chatbox.metrics import Metrics
from chatbox.wire import codec, messages
from chatbox.wire.backpressure import ByteGate
from chatbox.wire.clock import Timestamps
from chatbox.wire.protocol import ChatProtocol

__all__ = ["ChatFactory"]

ROOM_GUESS_RATE, ROOM_GUESS_BURST = 1.0, 30
ROOMS_MADE_RATE, ROOMS_MADE_BURST = 1 / 60, 10
CLOSE_GOING_AWAY = 1001
CLOSE_SERVICE_RESTART = 1012


class ChatFactory(WebSocketServerFactory):
    protocol = ChatProtocol
    logger = Logger()

    def __init__(
        self,
        rooms: Rooms,
        reactor: IReactorTime,
        history_cap: int = 10_000,
        limits: Limits | None = None,
        metrics: Metrics | None = None,
        moderation: Moderation | None = None,
    ) -> None:
        super().__init__(server=f"chatbox/{__version__}", reactor=reactor)
        self.rooms = rooms
        # An operator's rules (chatbox.chat.moderation), asked at every
        # handshake, name and send; changed only by chatbox.admin's Moderator.
        self.moderation = moderation or Moderation()
        self.slow_mode = SlowMode()
        self.history_cap = history_cap
        self.timestamps = Timestamps(reactor.seconds)
        self.limits = limits = limits or Limits()
        self.sends_per_address = AddressBuckets(
            limits.address_send_rate, limits.address_send_burst
        )
        self.names_per_address = AddressBuckets(
            limits.address_name_rate, limits.address_name_burst
        )
        # Typing hints reach everyone as messages do: one address gets half
        # as many of them as of messages, on top; past that they are dropped.
        # Their own budget, so a class typing never makes its sends refused.
        self.typing_per_address = AddressBuckets(
            limits.address_send_rate / 2, max(1, limits.address_send_burst // 2)
        )
        # Rooms, per address: names asked for that are no room one may enter
        # (guessing unlisted rooms' names costs a second a guess once the
        # burst is spent), and rooms made under --rooms open.
        self.room_guesses = AddressBuckets(ROOM_GUESS_RATE, ROOM_GUESS_BURST)
        self.rooms_made = AddressBuckets(ROOMS_MADE_RATE, ROOMS_MADE_BURST)
        self.reply_gate = ByteGate(limits.max_reply_bytes)
        self.log_budget = LogBudget(reactor, self.logger)
        # The open WebSockets, for broadcast. How many connections there are
        # in all, per address and in which state is chatbox.web.admission's
        # to count, from accept: set by make_site.
        self.connections: set[ChatProtocol] = set()
        self.admission: Any = None
        self.bytes_out = 0  # every byte written to clients; read by /metrics
        self.metrics = metrics or Metrics()
        self.metrics.observe(
            connections=lambda: len(self.connections),
            registered=rooms.registered_count,
            messages=rooms.message_count,
            bytes_out=lambda: self.bytes_out,
        )
        self._all_closed: list[Deferred[None]] = []
        self.closing = False
        # Verified nicknames (docs/PROTOCOL.md): set by chatbox.tap. With
        # --auth off (the default) tokens are ignored, as v2 did.
        self.auth_mode = "off"  # "off" | "optional" | "required"
        self.verifier: Any = None  # a chatbox.auth.verifier.Verifier
        # The operator's side (chatbox.admin.moderator.Moderator), which
        # moderators' requests and verified claims act through; None in a
        # factory built without one (moderator requests are then refused).
        self.moderator: Any = None
        rooms.attach(self._attach_room)

    @property
    def room(self) -> IRoom:
        """The default room, at `/`."""
        return self.rooms.default

    def _attach_room(self, name: str, room: IRoom) -> None:
        room.attach(partial(self.broadcast, room), self.names_lost)

    def now_ms(self) -> int:
        return int(self.reactor.seconds() * 1000)

    # -- membership --

    def connection_made(self, connection: ChatProtocol) -> None:
        self.connections.add(connection)

    def admit(self, connection: ChatProtocol, address: str, origin: str | None) -> None:
        """Let a handshake through, or refuse it with an HTTP status.

        The connection limits were applied at accept (chatbox.web.admission);
        what is left is the page's origin, known only now.
        """
        if not origin_allowed(origin, self.limits.allowed_origins):
            reason = "origin not allowed"
            if self.admission is not None:
                self.admission.refusals.note(address, reason)
            raise ConnectionDeny(403, reason)
        upgraded = getattr(connection.transport, "upgraded", None)
        if upgraded is not None:
            upgraded()

    def connection_lost(self, connection: ChatProtocol) -> None:
        self.connections.discard(connection)
        name = None
        if connection.room_name is not None:
            name = connection.room.release(connection, self.timestamps.now())
            self.rooms.leave(connection.room_name)
        if self.log_budget.allow(connection.address_key):
            if name is None:
                self.logger.info("connection from {peer} closed", peer=connection.peer)
            else:
                self.logger.info(
                    "{name!r} left ({peer})", name=name, peer=connection.peer
                )
        if not self.connections:
            waiters, self._all_closed = self._all_closed, []
            for waiter in waiters:
                waiter.callback(None)

    def names_lost(self, connections: list[ChatProtocol]) -> None:
        """The room can no longer vouch for these connections' nicknames (a
        cluster node that lost its lease): close them so their clients
        reconnect and register again, rather than chat under a name someone
        else may now hold."""
        for connection in connections:
            connection.close_with(CLOSE_SERVICE_RESTART, "reconnect and register again")

    # -- sending to many --

    def broadcast(
        self, room: IRoom, event: messages.Message, exclude: object = None
    ) -> None:
        """Send an event to every registered connection in `room` but `exclude`.

        Once shutdown has begun every local connection is being closed with
        1001, so there is nobody left to tell.
        """
        if self.closing:
            return
        # Private hook (broadcast fast path): framed once by Autobahn's
        # prepareMessage, then written as is by each connection's deliver,
        # which relies on Autobahn internals (ChatProtocol._write_now).
        prepared = self.prepareMessage(codec.encode(event))
        for connection in room.audience():
            if connection is not exclude:
                connection.deliver(prepared)

    def start_pinging(self, interval: float) -> None:
        """v2's JSON keepalive every `interval` seconds (ChatService's to
        schedule), and at once to each new connection (ChatProtocol.onOpen):
        a browser, which cannot see WebSocket pings, learns from the first
        how long a silence means the server is gone, before it can freeze.
        One frame, encoded once, serves every ping."""
        self.ping_frame = self.prepareMessage(codec.encode(messages.ping(interval)))

    # The keepalive frame, once pinging started.
    ping_frame: PreparedMessage | None = None

    def ping_everyone(self) -> None:
        """v2's JSON keepalive, to every open connection, registered or not."""
        for connection in list(self.connections):
            connection.deliver(self.ping_frame)

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
