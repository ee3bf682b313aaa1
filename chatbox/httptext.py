"""A whole plain-text HTTP/1.1 response, for the answers given below
twisted.web: admission's and the channel's refusals (chatbox.web), and a
WebSocket handshake refused after Autobahn has taken the connection over
(chatbox.wire.protocol). One shape for all of them: the status, the reason
as text, and the connection closed."""

__all__ = ["canned"]

_REASONS = {
    404: b"Not Found",
    410: b"Gone",
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def canned(code: int, text: str, *headers: bytes) -> bytes:
    """The response, to build once and write as it is."""
    body = text.encode() + b"\n"
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (code, _REASONS.get(code, b"Error")),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(body),
            *(header + b"\r\n" for header in headers),
            b"Connection: close\r\n\r\n",
            body,
        ]
    )
