"""One connection to Redis that knows at once whether it is up.

txredisapi connects, reconnects with backoff and speaks the protocol; its
connection handler would queue a command until Redis came back, leaving a
client waiting with no answer. A chat client must get `ErrorWhen...` with a
short reason instead, so chatbox asks the link for a live connection and
fails at once when there is none. Every command is bounded by a reply
timeout, after which txredisapi drops the connection and reconnects.
"""

from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatbox.chat.room import RoomError
from chatbox.cluster.address import RedisAddress

__all__ = ["RedisInDoubt", "RedisLink", "RedisUnavailable"]


class RedisUnavailable(RoomError):
    """Redis cannot be reached right now; the link keeps trying."""


class RedisInDoubt(RedisUnavailable):
    """The command was sent but its reply was lost (the connection dropped or
    Redis did not answer in time): it may or may not have been carried out."""


class _Factory(txredisapi.RedisFactory):
    # Back off from 0.25 s up to 2 s: a restarted Redis is back in service
    # within seconds, and a reconnect attempt costs next to nothing.
    initialDelay = 0.25
    factor = 2.0
    maxDelay = 2.0

    def __init__(
        self, link: "RedisLink", address: RedisAddress, timeout: float
    ) -> None:
        super().__init__(
            str(address),
            address.db or None,
            1,
            isLazy=True,
            charset=None,  # bytes in and out: history entries are kept encoded
            password=address.password,
            username=address.username,
            replyTimeout=timeout,
            convertNumbers=False,  # a message "123" must stay a string
        )
        self.link = link

    def addConnection(self, conn: txredisapi.RedisProtocol) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.link._connected(conn)

    def delConnection(self, conn: txredisapi.RedisProtocol) -> None:
        super().delConnection(conn)
        self.link._disconnected(conn)


class RedisLink:
    """A single Redis connection (commands on it run in the order sent)."""

    log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        timeout: float,
        name: str = "redis",
    ) -> None:
        self.address = address
        self.name = name
        self._reactor = reactor
        self._factory = _Factory(self, address, timeout)
        self._conn: txredisapi.RedisProtocol | None = None
        self._waiting: list[Deferred[txredisapi.RedisProtocol]] = []
        self._on_up: list[Callable[[], None]] = []
        self._ever_up = False

    def start(self) -> None:
        if self.address.socket:
            endpoint = UNIXClientEndpoint(self._reactor, self.address.socket, 5)
        else:
            endpoint = HostnameEndpoint(
                self._reactor, self.address.host, self.address.port, timeout=5
            )
        self._factory.startConnecting(endpoint)

    def stop(self) -> "Deferred[None]":
        return self._factory.disconnect()

    @property
    def up(self) -> bool:
        return self._conn is not None

    def on_up(self, callback: Callable[[], None]) -> None:
        """Call `callback` every time the link (re)connects."""
        self._on_up.append(callback)

    def when_up(self) -> "Deferred[txredisapi.RedisProtocol]":
        waiter: Deferred[txredisapi.RedisProtocol] = Deferred()
        if self._conn is not None:
            waiter.callback(self._conn)
        else:
            self._waiting.append(waiter)
        return waiter

    def _connected(self, conn: txredisapi.RedisProtocol) -> None:
        self._conn = conn
        self.log.info(
            "{name} {state} {address}",
            name=self.name,
            state="reconnected to" if self._ever_up else "connected to",
            address=str(self.address),
        )
        self._ever_up = True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(conn)
        for callback in list(self._on_up):
            callback()

    def _disconnected(self, conn: txredisapi.RedisProtocol) -> None:
        if conn is self._conn:
            self._conn = None
            if not self._factory.stopped:
                self.log.warn(
                    "{name} lost {address}; reconnecting",
                    name=self.name,
                    address=str(self.address),
                )

    # -- commands --

    def connection(self) -> txredisapi.RedisProtocol:
        if self._conn is None:
            raise RedisUnavailable("redis unavailable")
        return self._conn

    def execute(self, *args: Any, **options: Any) -> Deferred:
        """Run one command; fails at once with RedisUnavailable when down."""
        return self._send(lambda conn: conn.execute_command(*args, **options))

    def eval(self, script: bytes, keys: Sequence[Any], args: Sequence[Any]) -> Deferred:
        """Run a Lua script by its hash, loading it when Redis lacks it
        (after a restart, say)."""
        return self._send(lambda conn: conn.eval(script, list(keys), list(args)))

    def _send(
        self, command: Callable[[txredisapi.RedisProtocol], Deferred]
    ) -> Deferred:
        try:
            sent = command(self.connection())
        except (RedisUnavailable, txredisapi.ConnectionError):
            return fail(RedisUnavailable("redis unavailable"))
        return sent.addErrback(_translate)


def _translate(failure: Failure) -> Failure:
    """Redis trouble in words a chat client can be shown."""
    if failure.check(txredisapi.TimeoutError):  # before its base class
        raise RedisInDoubt("redis timed out")
    if failure.check(txredisapi.ConnectionError):
        raise RedisInDoubt("redis connection lost")
    if failure.check(txredisapi.ResponseError):
        RedisLink.log.error("redis refused a command: {error}", error=failure.value)
        raise RoomError("redis error")
    return failure
