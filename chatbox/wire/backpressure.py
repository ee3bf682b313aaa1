"""Notice a client that stopped reading before its unread output eats memory.

Registered as a streaming producer on the connection's transport, this is
told by Twisted when the transport's write buffer is full (pauseProducing)
and when it has drained (resumeProducing). While the buffer is full:

- the client's own requests are not read, so it cannot make the server
  produce more for it (a `get` reply can be megabytes);
- what others' activity still sends it (broadcasts) piles up in memory, so
  it is counted, and past the limit the connection is cut off.

A client that reads keeps draining its buffer and is never cut off, however
big a single reply or burst was; one that stopped reading is cut off after
at most `limit` bytes more than Twisted's own buffer.
"""

import fcntl
import struct
import termios
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime, ITransport
from zope.interface import implementer

__all__ = ["READ_GRACE", "READ_RATE", "ByteGate", "PendingOutput"]

# A client has READ_GRACE seconds plus one per READ_RATE bytes to read a
# large reply (1.3 MB: 30 s) before it is cut off as too slow.
READ_GRACE = 10.0
READ_RATE = 64 * 1024


def _kernel_queued(transport: ITransport) -> int:
    """Bytes in the socket's send queue, not yet acknowledged by the peer
    (Linux TIOCOUTQ); megabytes on a fast link, so a reply that has left
    Twisted's buffer may still be far from read. 0 where it cannot be told."""
    try:
        handle = transport.getHandle()
        raw = fcntl.ioctl(handle.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (AttributeError, OSError, ValueError):
        return 0
    return struct.unpack("i", raw)[0]


@implementer(IPushProducer)
class PendingOutput:
    def __init__(self, limit: int, transport: ITransport) -> None:
        self.limit = limit
        self.transport = transport
        self.paused = False
        self.unsent = 0
        self.stopped = False
        self._drain_waiters: list[Deferred[None]] = []

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.transport.pauseProducing()  # stop reading its requests

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.unsent = 0
            self.transport.resumeProducing()
            self._wake()

    def stopProducing(self) -> None:
        """The connection is gone: nothing will drain, so nobody may wait."""
        self.paused = True
        self.stopped = True
        self._wake()

    def _wake(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def drained(self) -> "Deferred[None]":
        """Fires once the client has read what it was sent (at once if it
        has), or the connection is gone."""
        if not self.paused or self.stopped:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append(waiter)
        return waiter

    def queued(self) -> int | None:
        """Bytes not yet taken by the client: in the transport's own write
        buffer and the kernel's send queue; None where the transport does not
        say (TLS).

        Private hook: read from Twisted's FileDescriptor internals
        (dataBuffer, the part of it already written up to `offset`, and
        _tempDataLen, what write() has queued since), the only way to see a
        client reading a large reply slowly rather than not at all, since
        Twisted resumes its producer only once the whole buffer has
        drained. A transport without them (TLS) gives None, and the reply
        must then be read at a minimum rate. tests/unit/test_private_hooks.py
        fails if a Twisted upgrade removes them."""
        transport = self.transport
        try:
            queued = (
                len(transport.dataBuffer) - transport.offset + transport._tempDataLen
            )
        except (AttributeError, TypeError):
            return None
        return queued + _kernel_queued(transport)

    def read_or_too_slow(
        self, reactor: IReactorTime, size: int, too_slow: Callable[[int], None]
    ) -> "Deferred[None]":
        """Fires once the client has read what it was sent (`size` bytes of
        it a large reply), like `drained`; meanwhile a client that has read
        nothing for READ_GRACE seconds is reported to `too_slow` with what
        is still unread, so one that asks and never reads is found out.
        Where the transport does not tell how much is queued (TLS), the
        reply must be read at READ_RATE at least."""
        check: list[Any] = [None]

        def progress(last: int | None) -> None:
            queued = self.queued()
            if queued is None or last is None or queued >= last:
                too_slow(queued if queued is not None else size)
                return
            check[0] = reactor.callLater(READ_GRACE, progress, queued)

        queued = self.queued()
        if queued is None:
            check[0] = reactor.callLater(READ_GRACE + size / READ_RATE, progress, None)
        else:
            check[0] = reactor.callLater(READ_GRACE, progress, queued)

        def read(result: object) -> object:
            if check[0] is not None and check[0].active():
                check[0].cancel()
            return result

        return self.drained().addBoth(read)

    def over_limit(self, size: int) -> bool:
        """Account for `size` more bytes; True if they must not be queued."""
        if not self.paused:
            return False
        self.unsent += size
        return self.limit > 0 and self.unsent > self.limit


class ByteGate:
    """Bounds the bytes of large replies that are built and not yet read by
    their clients, across all connections and per client address.

    A `get` reply can be megabytes; a thousand classic clients reconnecting
    at once all ask for one. Each large reply takes its size from the gate
    before it is built and gives it back once its client has read it, so the
    server holds at most `limit` bytes of them at a time and the rest wait,
    in order, instead of the server's memory growing with the crowd. One
    address may hold at most a quarter of the gate, so a few connections
    that ask and never read cannot make everyone else wait.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.per_key = max(1, limit // 4)
        self.used = 0
        self._used_by: Counter[str] = Counter()
        self._waiting: deque[tuple[str, int, Deferred[int]]] = deque()

    def acquire(self, size: int, key: str = "") -> "Deferred[int]":
        """Fires with the share granted (never more than a key may hold)."""
        share = min(size, self.per_key)
        waiter: Deferred[int] = Deferred()
        self._waiting.append((key, share, waiter))
        self._grant()
        return waiter

    def release(self, share: int, key: str = "") -> None:
        self.used -= share
        self._used_by[key] -= share
        if not self._used_by[key]:
            del self._used_by[key]
        self._grant()

    def _grant(self) -> None:
        """Grant waiters in order, skipping those whose address holds its
        quarter already (they wait for their own replies to be read)."""
        for item in list(self._waiting):
            key, share, waiter = item
            if self.used + share > self.limit:
                break
            if self._used_by[key] + share > self.per_key:
                continue
            self._waiting.remove(item)
            self.used += share
            self._used_by[key] += share
            waiter.callback(share)
