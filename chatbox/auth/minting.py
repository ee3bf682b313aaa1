# -*- test-case-name: tests.unit.test_auth_tokens -*-
"""Signing a token with the server's own secret, for `chatbox-admin token`:
an operator without a website of their own can vouch for a nickname too.

The token is HS256 over exactly the claims the Verifier reads, so what is
minted here is checked there like any website's token. A random `jti`
names it in audit lines; the token itself is returned once and kept
nowhere.
"""

import secrets
import time

import jwt

from chatbox.auth.identity import MODERATOR, Identity
from chatbox.auth.keys import MIN_SECRET_BYTES
from chatbox.chat.arns import is_valid_name
from chatbox.chat.roomnames import NotARoom, check_name

__all__ = ["DEFAULT_DAYS", "MAX_DAYS", "ROLES", "MintError", "mint"]

DEFAULT_DAYS = 30
MAX_DAYS = 366
MAX_ROOMS = 100
ROLES = frozenset({MODERATOR})
DAY = 86_400


class MintError(ValueError):
    """A token that cannot be made as asked; the message says why."""


def _rooms(rooms: list[str] | None) -> list[str] | None:
    if rooms is None:
        return None
    if not 1 <= len(rooms) <= MAX_ROOMS:
        raise MintError(f"rooms: 1 to {MAX_ROOMS} of them, or none for every room")
    canonical: list[str] = []
    for room in rooms:
        if not isinstance(room, str):
            raise MintError("rooms: room names are strings")
        if room in ("", "/"):
            name = ""  # the default room
        else:
            try:
                name = check_name(room)
            except NotARoom as e:
                raise MintError(f"rooms: {room!r}: {e}") from None
        if name not in canonical:
            canonical.append(name)
    return canonical


def mint(
    secret: bytes,
    name: str,
    roles: list[str] | None = None,
    rooms: list[str] | None = None,
    days: int = DEFAULT_DAYS,
    now: float | None = None,
) -> tuple[str, Identity]:
    """An HS256 token for `name` good for `days` from `now` (epoch
    seconds; the clock if None), and the Identity it vouches for;
    MintError if the request is wrong."""
    if len(secret) < MIN_SECRET_BYTES:
        raise MintError("the secret is too short to sign with")
    if not is_valid_name(name):
        raise MintError("name: not a valid nickname")
    if isinstance(days, bool) or not isinstance(days, int):
        raise MintError(f"days: a whole number from 1 to {MAX_DAYS}")
    if not 1 <= days <= MAX_DAYS:
        raise MintError(f"days: from 1 to {MAX_DAYS}, not {days}")
    given = sorted(set(roles or ()))
    unknown = [role for role in given if role not in ROLES]
    if unknown:
        raise MintError(f"roles: {unknown[0]!r} is not a role chatbox knows")
    listed = _rooms(rooms)
    issued = int(time.time() if now is None else now)
    expires = issued + days * DAY
    token_id = secrets.token_urlsafe(12)
    claims: dict[str, object] = {
        "sub": name,
        "iat": issued,
        "exp": expires,
        "jti": token_id,
    }
    if given:
        claims["roles"] = given
    if listed is not None:
        claims["rooms"] = listed
    token = jwt.encode(claims, secret, algorithm="HS256")
    identity = Identity(
        name=name,
        expires=expires * 1000,
        rooms=frozenset(listed) if listed is not None else None,
        roles=frozenset(given),
        source="secret",
        token_id=token_id,
    )
    return token, identity
