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

from twisted.internet.interfaces import IPushProducer, ITransport
from zope.interface import implementer

__all__ = ["PendingOutput"]


@implementer(IPushProducer)
class PendingOutput:
    def __init__(self, limit: int, transport: ITransport) -> None:
        self.limit = limit
        self.transport = transport
        self.paused = False
        self.unsent = 0

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.transport.pauseProducing()  # stop reading its requests

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.unsent = 0
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.paused = True

    def over_limit(self, size: int) -> bool:
        """Account for `size` more bytes; True if they must not be queued."""
        if not self.paused:
            return False
        self.unsent += size
        return self.limit > 0 and self.unsent > self.limit
