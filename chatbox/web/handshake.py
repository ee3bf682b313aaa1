"""WebSocket opening handshakes chatbox will not accept, refused before
Autobahn sees them.

Autobahn logs three lines for each handshake it fails (with the client's
header values in them), so a flood of bad handshakes would write the log
faster than its own bytes. Every refusal a real client or a scanner can
provoke is decided here instead, answered with a plain 4xx and counted in
the refusal summary (chatbox.web.admission). Autobahn still checks
everything again; what it refuses past this point is rare.
"""

import base64
import binascii
from collections.abc import Collection, Sequence

from twisted.web.server import Request

from chatbox.limits import origin_allowed

__all__ = ["handshake_refusal"]

Refusal = tuple[int, str, list[tuple[bytes, bytes]]]


def _one(request: Request, name: bytes) -> bytes | None:
    """The header's single value; None if missing or given more than once."""
    values = request.requestHeaders.getRawHeaders(name)
    return values[0] if values and len(values) == 1 else None


def _tokens(request: Request, name: bytes) -> set[bytes]:
    values = request.requestHeaders.getRawHeaders(name) or []
    return {t.strip().lower() for value in values for t in value.split(b",")}


def handshake_refusal(
    request: Request, allowed_origins: Sequence[str], versions: Collection[int]
) -> Refusal | None:
    """(status, reason, extra headers) to refuse the handshake with, or None."""
    if request.method != b"GET" or request.clientproto != b"HTTP/1.1":
        return 400, "a WebSocket handshake is an HTTP/1.1 GET", []
    if b"#" in request.uri:
        # Autobahn refuses a fragment by logging it, and what follows a
        # `#` may be a sign-in token (`/#?token=...`): never logged.
        return 400, "a WebSocket URL has no fragment (#)", []
    if _one(request, b"host") is None:
        return 400, "one Host header is needed", []
    if b"websocket" not in _tokens(request, b"upgrade"):
        return 400, "Upgrade must name websocket", []
    if b"upgrade" not in _tokens(request, b"connection"):
        return 400, "Connection must name upgrade", []
    version = _one(request, b"sec-websocket-version")
    if version is None or not version.isdigit() or int(version) not in versions:
        supported = ", ".join(str(v) for v in sorted(versions, reverse=True))
        return (
            426,
            "unsupported WebSocket version",
            [(b"Sec-WebSocket-Version", supported.encode())],
        )
    key = _one(request, b"sec-websocket-key")
    try:
        valid_key = key is not None and len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        valid_key = False
    if not valid_key:
        return 400, "Sec-WebSocket-Key must be 16 bytes in base64", []
    origins = request.requestHeaders.getRawHeaders(b"origin") or []
    if len(origins) > 1:
        return 400, "more than one Origin header", []
    origin = origins[0].decode("utf-8", "replace") if origins else None
    if not origin_allowed(origin, allowed_origins):
        return 403, "origin not allowed", []
    return None
