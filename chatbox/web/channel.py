"""twisted.web's HTTP channel, made safe for the open internet.

- No endpoint takes a request body, so one announced by Content-Length or
  Transfer-Encoding is refused with 413 before a byte of it is read (plain
  twisted.web buffers any body, to a temporary file past 100 kB).
- Heads are capped in count, line length and total size (400/414/431).
- The connection's deadline (chatbox.web.admission.Gate) is suspended while a
  request is served and restarted when the response ends, so an idle
  keep-alive connection gets the same absolute deadline as a new one.
- Odd requests (chatbox.web.paths) get a 4xx before any resource sees them.
"""

from typing import Any

from twisted.web import http, server

from chatbox.httptext import canned
from chatbox.web.admission import Gate
from chatbox.web.paths import odd_request
from chatbox.web.responses import plain

__all__ = ["ChatChannel", "ChatRequest"]

MAX_HEADERS = 100
MAX_HEAD_BYTES = 16 * 1024
MAX_LINE = 8 * 1024

BODY_REFUSED = canned(413, "request bodies are not accepted here")
URI_TOO_LONG = canned(414, "request target too long")
HEAD_TOO_LARGE = canned(431, "request head too large")


class ChatRequest(server.Request):
    def process(self) -> None:
        refusal = odd_request(
            self.method, self.uri, list(self.requestHeaders.getAllRawHeaders())
        )
        if refusal is None:
            super().process()
            return
        code, reason = refusal
        if code == 405:
            self.setHeader(b"allow", b"GET, HEAD")
        self.write(plain(self, code, reason))
        self.finish()


class ChatChannel(http.HTTPChannel):
    # Private hooks: twisted.web.http.HTTPChannel has no public way to refuse
    # a request before its body is read or to see where its head ends. This
    # class overrides the methods HTTPChannel and its LineReceiver call at
    # each step (allHeadersReceived, allContentReceived, requestDone,
    # rawDataReceived, lineLengthExceeded, timeoutConnection) and reads its
    # state: `_command` (set once the request line is parsed), `length` (the
    # announced body length), `requests` (the request being read) and
    # `_handlingRequest`. tests/unit/test_private_hooks.py fails if a
    # Twisted upgrade changes any of them.
    maxHeaders = MAX_HEADERS
    totalHeadersSize = MAX_HEAD_BYTES
    MAX_LENGTH = MAX_LINE
    _refused = False

    @property
    def _gate(self) -> Gate | None:
        return self.transport if isinstance(self.transport, Gate) else None

    def _refuse(self, response: bytes, linger: bool = False) -> None:
        """Answer `response` and close, handling nothing more."""
        self._refused = True
        self.persistent = False
        gate = self._gate
        if gate is not None:
            gate.hang_up(response, linger)
        elif self.transport is not None:
            self.transport.write(response)
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        # Past the request line, a long line is a header: 431, not 414.
        self._refuse(HEAD_TOO_LARGE if hasattr(self, "_command") else URI_TOO_LONG)

    def allHeadersReceived(self) -> None:
        if self.length != 0:  # a Content-Length above 0, or chunked
            self._refuse(BODY_REFUSED, linger=True)
            return
        gate = self._gate
        if gate is not None:
            forwarded = self.requests[-1].requestHeaders.getRawHeaders(
                b"x-forwarded-for"
            )
            refusal = gate.head_received(
                b",".join(forwarded).decode("latin-1") if forwarded else None
            )
            if refusal is not None:
                self._refuse(refusal)
                return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if self._refused:
            return
        gate = self._gate
        if gate is not None:
            gate.disarm()  # Serving now; the deadline restarts at the end.
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        gate = self._gate
        if gate is not None and self.persistent and not self._handlingRequest:
            gate.arm()

    def timeoutConnection(self) -> None:
        # Only the Gate's absolute deadline closes connections (no idle timer
        # is set), but should one be, it must not log per connection.
        self.loseConnection()
