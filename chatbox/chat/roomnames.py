"""What a room is called: the URL path, in one form everyone can type.

A room name is what a teacher writes on the board and a student types into
an address bar, so it is plain: lower-case ASCII letters, digits, `-` and
`_`. Case is folded (a poster's `Class-7A` is `class-7a`) and percent-
encoding decoded once, so every spelling a browser may send reaches one
room. Unicode is refused rather than normalised: two rooms whose names look
alike but differ would be a phishing tool, and a file name per room must be
safe on every file system.

Paths the server serves itself can never be rooms, nor can those it will
serve; they are reserved here, in one place, and chatbox.web checks its own
children against this list.
"""

import re
from urllib.parse import unquote

__all__ = [
    "DEFAULT",
    "MAX_LENGTH",
    "RESERVED",
    "NotARoom",
    "check_name",
    "room_of_path",
]

DEFAULT = ""  # `/`: the chat v2 clients have always joined
MAX_LENGTH = 40
RESERVED = frozenset(
    {
        "admin",
        "api",
        "auth",
        "favicon",
        "healthz",
        "login",
        "logout",
        "metrics",
        "robots",
        "rooms",
        "static",
        "token",
        "well-known",
        "ws",
    }
)
_NAME = re.compile(rf"[a-z0-9][a-z0-9_-]{{0,{MAX_LENGTH - 1}}}")
RULE = (
    f"a room name is 1 to {MAX_LENGTH} of a-z, 0-9, - and _, "
    "starting with a letter or digit"
)


class NotARoom(ValueError):
    """The path cannot name a room; str() is the reason a client is shown."""


def check_name(name: str) -> str:
    """`name` in canonical form, or NotARoom; for operator lists too."""
    folded = name.lower() if name.isascii() else name
    if not _NAME.fullmatch(folded):
        raise NotARoom(RULE)
    if folded in RESERVED:
        raise NotARoom(f"{folded!r} is reserved by the server")
    return folded


def room_of_path(path: str) -> str:
    """The room a request path names (DEFAULT for `/`), or NotARoom.

    `path` is the raw path of the request line, query excluded.
    """
    if not path.startswith("/"):
        raise NotARoom("a room is a path")
    inner = path[1:]
    if inner.endswith("/") and len(inner) > 1:
        inner = inner[:-1]
    if "/" in inner:
        raise NotARoom("a room is one path segment")
    try:
        plain = unquote(inner, errors="strict") if "%" in inner else inner
    except UnicodeDecodeError:
        raise NotARoom("a room name is UTF-8, percent-encoded") from None
    if plain == DEFAULT:
        return DEFAULT
    if "/" in plain:
        raise NotARoom("a room is one path segment")
    return check_name(plain)
