"""Which requests are too odd to serve, decided before any resource sees them.

Every resource behind the chat port is reached by GET (or HEAD) at a plain
path. Anything else (a NUL that would reach open(), `..`, a control
character that would reach a log, an absolute-form URI, a body) is a
client's mistake or an attack, and gets a 4xx with a reason here, so no
resource can turn it into a 500.
"""

from urllib.parse import unquote_to_bytes

__all__ = ["MAX_URI", "odd_request"]

MAX_URI = 2048  # what every browser and proxy handles; chatbox's own are short
METHODS = (b"GET", b"HEAD")
_HEX = frozenset(b"0123456789abcdefABCDEF")
# Printable ASCII but the backslash, which some servers take for a slash.
_URI_BYTES = bytes(b for b in range(0x21, 0x7F) if b != ord("\\"))


def _bad_percent(path: bytes) -> bool:
    start = 0
    while (at := path.find(b"%", start)) != -1:
        pair = path[at + 1 : at + 3]
        if len(pair) != 2 or not _HEX.issuperset(pair):
            return True
        start = at + 3
    return False


def _printable(text: str) -> bool:
    return text.replace("\t", " ").isprintable()


def odd_request(
    method: bytes, uri: bytes, headers: list[tuple[bytes, list[bytes]]]
) -> tuple[int, str] | None:
    """(status, reason) when the request must be refused, else None."""
    if len(uri) > MAX_URI:
        return 414, "request target too long"
    if method not in METHODS:
        return 405, "only GET and HEAD are served here"
    if not uri.startswith(b"/") or uri.startswith(b"//"):
        return 400, "request target must be a path"
    if uri.translate(None, _URI_BYTES):  # anything left is not allowed
        return 400, "request target has characters a URL cannot hold"
    path = uri.split(b"?", 1)[0]
    if _bad_percent(uri):
        return 400, "invalid percent-encoding"
    decoded = unquote_to_bytes(path)
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return 400, "path is not UTF-8"
    if not _printable(text) or "\\" in text:
        return 400, "path has control characters"
    segments = path.split(b"/")[1:]
    for index, segment in enumerate(segments):
        plain = unquote_to_bytes(segment)
        if plain in (b".", b"..") or b"/" in plain:
            return 400, "path has dot or slash segments"
        if not plain and index < len(segments) - 1:
            return 400, "path has empty segments"
    for name, values in headers:
        for value in (name, *values):
            if not _printable(value.decode("utf-8", "replace")):
                return 400, "header has control characters"
    return None
