"""What a checked token vouches for, and why a token was refused.

Every layer that deals with verified nicknames (the handshake, `name`, the
moderator requests, the admin API) shares these two shapes, so this module
imports nothing of chatbox but the nickname rules.
"""

from dataclasses import dataclass, field

from chatbox.chat.arns import name_keys, spelling

__all__ = [
    "MODERATOR",
    "REASONS",
    "Identity",
    "TokenRefused",
]

MODERATOR = "moderator"

# The `reason` of a refused token, each with what it means. A client shows
# the `error` sentence that comes with it; these are for programs.
REASONS = {
    "TokenMalformed": "not a token chatbox can read, or its claims are wrong",
    "TokenAlgorithm": "signed with an algorithm this server does not accept",
    "TokenBadSignature": "not signed by a key this server trusts",
    "TokenExpired": "past its expiry (exp)",
    "TokenNotYetValid": "not valid yet (nbf or iat in the future)",
    "TokenWrongRoom": "not good in this room",
    "TokenWrongIssuer": "issued by someone this server does not expect (iss)",
    "TokenWrongAudience": "meant for another service (aud)",
}


class TokenRefused(Exception):
    """A token that does not vouch for anyone here. `reason` is one of
    REASONS; str() is a sentence safe to show the client and to log (it
    never contains the token)."""

    def __init__(self, reason: str, error: str) -> None:
        assert reason in REASONS, reason
        super().__init__(error)
        self.reason = reason
        self.error = error


@dataclass(frozen=True)
class Identity:
    """A nickname an operator vouches for, as one checked token says.

    `rooms` None: good in every room. `expires` is epoch ms; `source` names
    the key that signed it ("secret", "public-key", "jwks:KID"), for audit
    lines; `token_id` is the token's `jti`, if it has one. Neither is
    secret: the token itself is kept nowhere.
    """

    name: str
    expires: int
    rooms: frozenset[str] | None = None
    roles: frozenset[str] = frozenset()
    source: str = "secret"
    token_id: str | None = None
    keys: tuple[str, ...] = field(init=False, repr=False, compare=False)
    spelling: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", name_keys(self.name))
        object.__setattr__(self, "spelling", spelling(self.name))

    def covers(self, room: str) -> bool:
        """Good in `room` ("" is the default room)."""
        return self.rooms is None or room in self.rooms

    def moderates(self, room: str, now: int) -> bool:
        """A moderator of `room`, and still unexpired: moderator powers end
        with the token, though the nickname stays verified until the
        connection closes."""
        return MODERATOR in self.roles and self.covers(room) and now < self.expires

    def is_for(self, name: str) -> bool:
        """`name` is this identity's nickname, give or take case, width and
        spacing (`chat.arns.spelling`), so the connection may take it. Not
        any name ARNS calls the same: `Ian` shares a key with `Lan`, and a
        token for one must never take the other."""
        return spelling(name) == self.spelling

    def describe(self) -> str:
        """For audit lines: who, and which key vouched."""
        return f"{self.name!r} ({self.source})"
