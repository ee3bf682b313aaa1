"""The services twistd runs: the chat itself and the listening port.

Shutdown order matters for "lose nothing": the port stops accepting first
(MultiService stops children in reverse), then every pending send is made
durable and acknowledged, then every client is closed with 1001, then every
loaded room closes, the default one last (a single process folds each
journal into its history file; a cluster node releases its nicknames and
its lease). `stopService` returns that
Deferred, so twistd exits only when it has finished.
"""

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorCore,
    IStreamServerEndpoint,
)
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.web.server import Site

from chatbox.chat.rooms import Rooms
from chatbox.wire.factory import ChatFactory

__all__ = ["ChatService", "ListenerService"]

READ_BEFORE_CLOSE = 0.1


class ChatService(Service):
    log = Logger()

    def __init__(
        self,
        factory: ChatFactory,
        rooms: Rooms,
        ping_interval: float,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self.factory = factory
        self.rooms = rooms
        self.room = rooms.default
        self.ping_interval = ping_interval
        self.shutdown_timeout = shutdown_timeout
        self._pinger: LoopingCall | None = None
        # The operator's rules' store (chatbox.chat.moderation), closed
        # before the rooms: on a cluster it shares the default room's link.
        self.moderation_store: Any = None
        self.moderator: Any = None

    def startService(self) -> None:
        super().startService()
        self.room.start()  # a named room starts as it loads
        if self.ping_interval > 0:
            self.factory.start_pinging(self.ping_interval)
            self._pinger = LoopingCall(self.factory.ping_everyone)
            self._pinger.clock = self.factory.reactor
            self._pinger.start(self.ping_interval, now=False)

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        reactor = self.factory.reactor
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        # From here new sends are refused, so every stored one is acknowledged.
        self.factory.closing = True
        # Requests clients sent before the signal may still sit unread in the
        # sockets; once the close frame is out, Autobahn would drop them
        # unanswered. A moment lets the reactor read them, so each gets its
        # reply (ErrorWhenSend "server shutting down" for a send).
        await deferLater(reactor, READ_BEFORE_CLOSE, lambda: None)
        self.log.info(
            "shutting down: saving pending messages, then closing {count} client(s)",
            count=len(self.factory.connections),
        )
        await self.rooms.flush()
        try:
            await self.factory.close_all().addTimeout(self.shutdown_timeout, reactor)
        except TimeoutError:
            # Acknowledged messages are durable already; nothing is lost.
            self.log.warn(
                "{count} client(s) did not close in time; dropping them",
                count=len(self.factory.connections),
            )
            self.factory.abort_all()
        self.factory.log_budget.flush()
        if self.moderation_store is not None:
            await self.moderation_store.close()
        named = self.rooms.loaded_count() - 1
        complete = await self.rooms.close()
        if complete:
            self.log.info(
                "history saved: {count} messages in {where}{rooms}",
                count=self.room.message_count(),
                where=self.room.where,
                rooms=f", and {named} more room(s)" if named > 0 else "",
            )
        else:
            # Never claim a save that failed. The room's own error line says
            # what failed; a single server's journal keeps every message.
            self.log.error(
                "history NOT saved: the final write to {where} failed (see "
                "above); all {count} acknowledged messages are kept for the "
                "next start",
                count=self.room.message_count(),
                where=self.room.where,
            )
        # twistd re-raises the SIGTERM/SIGINT it stopped on, so the exit status
        # would say "killed". A clean shutdown exits 0; an unclean one keeps
        # the signal, so supervisors see it.
        # Private hook: relies on Twisted's reactor recording the signal in
        # `_exitSignal` (ReactorBase.sigTerm/sigInt) and on twistd's
        # ApplicationRunner reading it only after the reactor has stopped,
        # i.e. after this Deferred has fired.
        if complete and getattr(reactor, "_exitSignal", None) is not None:
            reactor._exitSignal = None


class ListenerService(StreamServerEndpointService):
    """Twisted's endpoint service, saying where it listens and stopping
    twistd when it cannot: a chat server that starts without its port would
    look up to a supervisor while serving nobody."""

    log = Logger()
    # A port that fails at once (TCP's "address in use") is raised out of
    # privilegedStartService, so twistd exits before dropping privileges;
    # Twisted's own strports services set this documented attribute too.
    # Private hook: relies on StreamServerEndpointService's
    # privilegedStartService reading `self._raiseSynchronously`.
    _raiseSynchronously = True

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        site: Site,
        scheme: str,
        reactor: IReactorCore,
        label: str = "chatbox",
    ) -> None:
        super().__init__(endpoint, site)
        self.scheme = scheme
        self.label = label  # whose "listening on" line it is
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self._waiting: list[Deferred[IListeningPort]] = []

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            # One line, naming whose port, not a traceback: the usual
            # cause is a second instance, or --admin-port equal to --port.
            why = e.socketError.strerror if e.socketError is not None else e
            raise SystemExit(
                f"chatbox: cannot start: {self.label} cannot listen on "
                f"{e.interface or '*'}:{e.port}: {why}"
            ) from None
        # Private hook: StreamServerEndpointService keeps the listen's
        # Deferred in `_waitingForPort`, after its own errback, which has
        # logged a later failure and passes None along (a failure at once
        # was raised above). Its own stopService chains on it too.
        self._waitingForPort.addCallback(self._listened)

    def listening(self) -> "Deferred[IListeningPort]":
        """Fires with the port once listening (at once if it already is)."""
        if self.port is not None:
            return succeed(self.port)
        waiter: Deferred[IListeningPort] = Deferred()
        self._waiting.append(waiter)
        return waiter

    def _listened(self, port: IListeningPort | None) -> IListeningPort | None:
        waiting, self._waiting = self._waiting, []
        if port is None:
            if self.running:  # not a listen cancelled by stopService
                self.log.error("could not listen (see above); stopping")
                for waiter in waiting:
                    waiter.errback(RuntimeError("could not listen"))
                self.reactor.stop()
            return None
        self.port = port
        address = port.getHost()
        where = (
            f"{self.scheme}://{address.host}:{address.port}"
            if hasattr(address, "port")
            else str(address)
        )
        self.log.info("{label} listening on {where}", label=self.label, where=where)
        for waiter in waiting:
            waiter.callback(port)
        return port

    def stopService(self) -> "Deferred[None]":
        self.port = None
        self.running = False  # before the cancel reaches _listened
        return super().stopService()
