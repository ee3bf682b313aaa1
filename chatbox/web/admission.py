"""Every TCP connection on the chat port, from accept to close.

Admission is the one owner of how many connections there are, in total and
per client address, and in which state: *pending* (has not yet sent a
complete request head), *http* (has, and is served as plain HTTP or is idle
between keep-alive requests) and *open* (upgraded to a WebSocket). It wraps
the Site, so it sees each connection at accept, before any HTTP parsing, and
at close, whichever protocol holds the connection by then.

A connection over a limit is answered at accept with a canned 429 or 503
and closed: no Request object, no HTTP parsing, no log line. Refusals are
counted and logged as a summary (chatbox.web.responses), so an attack cannot
make the log grow faster than its own traffic.

Behind `--trusted-proxies` the peer is the proxy, so per-address limits wait
until the first request head names the client in X-Forwarded-For (the proxy
reads heads itself, so a slow client never reaches chatbox as pending).
"""

from collections import Counter
from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocolNegotiationFactory,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvidedBy, directlyProvides, implementer

from chatbox.httptext import canned
from chatbox.limits import AddressBuckets, Limits, address_key, client_address
from chatbox.web.responses import RefusalLog

__all__ = ["Admission", "Gate"]

# A connection told to close that does not (its peer stopped reading) is
# dropped this much later, so it cannot keep its file descriptor.
CLOSE_GRACE = 2.0
# A connection accepted while its address already has --max-pending-per-ip
# unfinished requests is not refused at once: a class loading a page makes
# a burst of connections the server accepts before it reads any of them.
# It gets this long to send its request head, then 429; a browser sends it
# at once, a slow trickler cannot.
PROBATION = 1.0
# What a refused client may still send while it reads its refusal.
LINGER_BYTES = 256 * 1024

PENDING, HTTP, OPEN = "pending", "http", "open"

FULL = canned(503, "server full, try again later", b"Retry-After: 5")
TOO_MANY = canned(429, "too many connections from your address", b"Retry-After: 5")
TOO_MANY_PENDING = canned(
    429, "too many unfinished requests from your address", b"Retry-After: 5"
)
TOO_OFTEN = canned(429, "connecting too often from your address", b"Retry-After: 1")
TIMED_OUT = canned(408, "request not completed in time")


class _Refusal(Protocol):
    """Says its canned response and hangs up; reads nothing.

    Over TLS the response waits for the TLS handshake, which a client that
    never sends one would hold off for ever: there it is dropped after
    CLOSE_GRACE.
    """

    def __init__(self, response: bytes, reactor: IReactorTime) -> None:
        self.response = response
        self.reactor = reactor
        self._abort: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.transport.write(self.response)
        self.transport.loseConnection()
        if ISSLTransport.providedBy(self.transport):
            self._abort = self.reactor.callLater(
                CLOSE_GRACE, self.transport.abortConnection
            )

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self._abort is not None and self._abort.active():
            self._abort.cancel()


class Gate(ProtocolWrapper):
    """One accepted connection: its address key, state and deadline.

    It stays the transport's protocol for the connection's whole life (for
    the HTTP channel, then for the WebSocket that takes the connection over),
    so accept and close are always seen here, in one place.
    """

    factory: "Admission"

    def __init__(
        self,
        factory: "Admission",
        wrapped: Any,
        key: str | None,
        probation: bool = False,
    ) -> None:
        super().__init__(factory, wrapped)
        self.key = key
        self.state = PENDING
        # Accepted while its address had its fill of unfinished requests:
        # it gets PROBATION seconds, not the whole deadline, for its head.
        self.probation = probation
        self._deadline: IDelayedCall | None = None
        self._abort: IDelayedCall | None = None
        self._discard: int | None = None  # bytes still to throw away, lingering

    def makeConnection(self, transport: Any) -> None:
        self.arm()  # From accept: before the wrapped protocol sees anything.
        super().makeConnection(transport)
        # Autobahn takes an ISSLTransport for the TLS connection object itself
        # (for WAMP channel binding, unused here) and fails on a wrapper.
        directlyProvides(self, directlyProvidedBy(self) - ISSLTransport)

    # -- the deadline --

    def arm(self) -> None:
        """Start the absolute deadline for the next request head (or upgrade)."""
        self.disarm()
        timeout = self.factory.limits.handshake_timeout
        if self.probation and self.state == PENDING:
            timeout = min(timeout, PROBATION) if timeout > 0 else PROBATION
        if timeout > 0:
            self._deadline = self.factory.reactor.callLater(timeout, self._expire)

    def disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.probation and self.state == PENDING:
            if self.key is not None:
                self.factory.refusals.note(self.key, "too many unfinished requests")
            self.hang_up(TOO_MANY_PENDING)
        else:
            self.hang_up(TIMED_OUT)

    def hang_up(self, response: bytes, linger: bool = False) -> None:
        """Answer `response` and close, dropping the connection if it does
        not go within CLOSE_GRACE (a peer that reads nothing).

        A client still sending (a body) would get a TCP reset if we closed
        with its bytes unread, and a reset can destroy the response before
        the client reads it. With `linger` only our side is closed, and up
        to LINGER_BYTES more are read and thrown away meanwhile.
        """
        if self.transport is None or self.disconnecting:
            return
        self.transport.write(response)
        # Over TLS the TCP connection cannot be half closed under it.
        if linger and not ISSLTransport.providedBy(self.transport):
            self._discard = LINGER_BYTES
            self.disconnecting = 1
            self.transport.loseWriteConnection()
        else:
            self.loseConnection()
        self._abort = self.factory.reactor.callLater(
            CLOSE_GRACE, self.transport.abortConnection
        )

    def dataReceived(self, data: bytes) -> None:
        if self._discard is None:
            self.wrappedProtocol.dataReceived(data)
            return
        self._discard -= len(data)
        if self._discard < 0:
            self.transport.abortConnection()

    # -- what the HTTP channel and the chat factory report --

    def head_received(self, forwarded_for: str | None) -> bytes | None:
        """The first complete request head: the connection is no longer
        pending. Behind trusted proxies it now has a client address, and is
        admitted or refused (the canned response to send) as at accept."""
        if self.state != PENDING:
            return None
        return self.factory.head_received(self, forwarded_for)

    def upgraded(self) -> None:
        """The WebSocket handshake was accepted: the deadline no longer applies.

        From here every byte each way is the WebSocket's, so the wrapper
        steps out of the hot paths (broadcast writes to every client) while
        staying the transport's protocol, to see the close.
        """
        self.disarm()
        self.factory.moved(self, OPEN)
        self.write = self.transport.write
        self.writeSequence = self.transport.writeSequence
        if self._discard is None:
            self.dataReceived = self.wrappedProtocol.dataReceived

    # -- the connection's end --

    def connectionLost(self, reason: Failure) -> None:
        self.disarm()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        super().connectionLost(reason)


@implementer(IProtocolNegotiationFactory)
class Admission(WrappingFactory):
    """Counts, caps and times every connection the Site gets (see module doc)."""

    protocol = Gate

    def __init__(self, site: Factory, limits: Limits, reactor: IReactorTime) -> None:
        super().__init__(site)
        self.limits = limits
        self.reactor = reactor
        self.total = 0
        self._held: Counter[str] = Counter()  # per key, every state
        self._pending: Counter[str] = Counter()  # per key, pending only
        self._rate = AddressBuckets(limits.connection_rate, limits.connection_burst)
        self.refusals = RefusalLog(reactor)

    def acceptableProtocols(self) -> list[bytes]:
        """What ALPN may choose over TLS: HTTP/1.1 alone (the WebSocket
        upgrade needs it; chatbox speaks no h2). Twisted's TLS asks the
        factory it wraps, this one, and without an answer it aborted every
        handshake of a client that offers ALPN, which is every browser."""
        return [b"http/1.1"]

    # -- accept --

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        limits = self.limits
        host = getattr(addr, "host", None)
        if limits.max_connections and self.total >= limits.max_connections:
            return self._refuse(host or "-", FULL, "server full")
        key = None
        probation = False
        if host is not None and not limits.trusted_proxies:
            key = address_key(host)
            refusal = self._check(key)
            if refusal is not None:
                return self._refuse(key, *refusal)
            probation = bool(
                limits.max_pending_per_address
                and self._pending[key] >= limits.max_pending_per_address
            )
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return Gate(self, wrapped, key, probation)

    def _check(self, key: str) -> tuple[bytes, str] | None:
        limits = self.limits
        if (
            limits.max_connections_per_address
            and self._held[key] >= limits.max_connections_per_address
        ):
            return TOO_MANY, "too many connections"
        if not self._rate.take(key, self.reactor.seconds()):
            return TOO_OFTEN, "connecting too often"
        return None

    def _refuse(self, key: str, response: bytes, reason: str) -> Protocol:
        self.refusals.note(key, reason)
        refusal = _Refusal(response, self.reactor)
        refusal.factory = self
        return refusal

    # -- the life of a connection --

    def registerProtocol(self, gate: Gate) -> None:
        super().registerProtocol(gate)
        self.total += 1
        if gate.key is not None:
            self._held[gate.key] += 1
            self._pending[gate.key] += 1

    def head_received(self, gate: Gate, forwarded_for: str | None) -> bytes | None:
        if gate.key is None and self.limits.trusted_proxies:
            peer = gate.getPeer()
            address = client_address(
                getattr(peer, "host", "-"), forwarded_for, self.limits.trusted_proxies
            )
            key = address_key(address)
            refusal = self._check(key)
            if refusal is not None:
                self.refusals.note(key, refusal[1])
                return refusal[0]
            gate.key = key
            self._held[key] += 1
            gate.state = HTTP
            return None
        self.moved(gate, HTTP)
        return None

    def moved(self, gate: Gate, state: str) -> None:
        if gate.state == PENDING and gate.key is not None:
            self._forget(self._pending, gate.key)
        gate.state = state

    def unregisterProtocol(self, gate: Gate) -> None:
        super().unregisterProtocol(gate)
        self.total -= 1
        if gate.key is not None:
            self._forget(self._held, gate.key)
            if gate.state == PENDING:
                self._forget(self._pending, gate.key)

    @staticmethod
    def _forget(counter: Counter[str], key: str) -> None:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]

    def doStop(self) -> None:
        self.refusals.flush()
        super().doStop()
