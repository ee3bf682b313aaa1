# -*- test-case-name: tests.unit.test_auth_tokens -*-
"""Checking a token: is it signed by a key this server trusts, and what
does it vouch for?

The order matters. The size is checked before any parsing; the header's
`alg` must be one the configured keys allow (`none` never is); the
signature is checked with the keys of that algorithm's kind only (HS*
against the secret, the others against the public keys); and only then are
the claims read, so nothing an unsigned token says is believed, or echoed.

PyJWT checks the signature; the claims are checked here, against the
`now` the caller passes (a test's clock, the reactor's), so exp, nbf and
iat share one leeway and one rule. PyJWT's own time checks are off.

Refusals are TokenRefused with a reason from identity.REASONS and a
sentence for people. Neither ever holds the token or a key.
"""

import base64
import binascii
import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import jwt
from jwt.exceptions import InvalidSignatureError, PyJWTError
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from chatbox.auth.identity import MODERATOR, Identity, TokenRefused
from chatbox.auth.keys import KeyFileError, Keys, load_keys
from chatbox.chat.arns import is_valid_name
from chatbox.chat.roomnames import NotARoom, check_name

__all__ = ["DEFAULT_LEEWAY", "MAX_LEEWAY", "MAX_TOKEN", "Verifier"]

log = Logger()

# Longer tokens are refused before any parsing (a URL of that size is
# already unusual; a header or frame of it costs nothing to refuse).
MAX_TOKEN = 8 * 1024
DEFAULT_LEEWAY = 60
MAX_LEEWAY = 600
MAX_ROOMS = 100
MAX_ROLES = 100
MAX_TOKEN_ID = 200
# Roles chatbox knows; the rest of a token's roles are not kept.
KNOWN_ROLES = frozenset({MODERATOR})

# Every claim PyJWT would check by itself is checked here instead, against
# the caller's clock; PyJWT checks the signature and that the payload is a
# JSON object.
_SIGNATURE_ONLY = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}
_DECODER = jwt.PyJWT(options=_SIGNATURE_ONLY)  # type: ignore[arg-type]


def _when(seconds: float) -> str:
    try:
        moment = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return "a time out of range"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _shown(value: object) -> str:
    """A header value fit for a sentence: short, printable, quoted."""
    if isinstance(value, str) and len(value) <= 20 and value.isprintable():
        return repr(value)
    return "an unreadable value"


def _malformed(error: str) -> TokenRefused:
    return TokenRefused("TokenMalformed", error)


def _header(token: str) -> dict[str, Any]:
    """The JOSE header, only to pick the algorithm and key: PyJWT reads
    the whole token again, strictly, when it checks the signature. (Its
    own unverified read walks every byte of all three parts in Python,
    a third of an HS256 verify.)"""
    part, dot, rest = token.partition(".")
    if not dot or rest.count(".") != 1 or len(part) > 1024:
        raise _malformed("this is not a token chatbox can read")
    try:
        header = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, binascii.Error):
        raise _malformed("this is not a token chatbox can read") from None
    if not isinstance(header, dict):
        raise _malformed("this is not a token chatbox can read")
    if "alg" not in header:
        raise _malformed("the token's header names no algorithm (alg)")
    return header


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None and name not in claims:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _malformed(f"the token's {name} is not a number of seconds")
    if value != value or abs(value) > 1e13:  # NaN, or past year 300,000
        raise _malformed(f"the token's {name} is out of range")
    return float(value)


def _string_list(claims: dict[str, Any], name: str, most: int) -> list[str] | None:
    if name not in claims:
        return None
    value = claims[name]
    if not isinstance(value, list) or not 1 <= len(value) <= most:
        raise _malformed(f"the token's {name} must be a list of 1 to {most} names")
    if not all(isinstance(item, str) for item in value):
        raise _malformed(f"the token's {name} must hold strings only")
    return value


def _rooms(claims: dict[str, Any]) -> frozenset[str] | None:
    listed = _string_list(claims, "rooms", MAX_ROOMS)
    if listed is None:
        return None
    rooms = set()
    for room in listed:
        if room == "":
            rooms.add("")  # the default room, at /
            continue
        try:
            rooms.add(check_name(room))
        except NotARoom:
            raise _malformed(
                f"the token's rooms hold {_shown(room)}, which is not a room name"
            ) from None
    return frozenset(rooms)


def _room_named(room: str) -> str:
    return "the default room" if room == "" else f"room {room!r}"


class Verifier:
    """Checks tokens against the configured keys, which `reload` replaces.

    `paths` are the option values (--auth-secret, --auth-public-key,
    --auth-jwks), kept to read the files again on SIGHUP.
    """

    def __init__(
        self,
        keys: Keys,
        leeway: float = DEFAULT_LEEWAY,
        issuer: str | None = None,
        audience: str | None = None,
        paths: dict[str, str | None] | None = None,
    ) -> None:
        self.keys = keys
        self.leeway = leeway
        self.issuer = issuer
        self.audience = audience
        self.paths = dict(paths or {})

    @classmethod
    def load(
        cls,
        secret: str | None = None,
        public_key: str | None = None,
        jwks: str | None = None,
        **options: Any,
    ) -> "Verifier":
        """At start-up (blocking); KeyFileError names a bad file."""
        paths = {"secret": secret, "public_key": public_key, "jwks": jwks}
        return cls(load_keys(**paths), paths=paths, **options)

    @property
    def secret(self) -> bytes | None:
        """The server's own key, for minting (None without --auth-secret)."""
        return self.keys.secret

    def reload(self) -> "Deferred[bool]":
        """Read the files again on a thread; True if the new keys are in
        force. A bad file is logged, and the old keys stay."""

        def loaded(keys: Keys) -> bool:
            self.keys = keys
            log.info(
                "auth keys reloaded: {summary}",
                summary=self.describe(),
            )
            return True

        def failed(failure: Any) -> bool:
            failure.trap(KeyFileError)
            log.error(
                "auth keys NOT reloaded, the previous ones stay in force: {why}",
                why=str(failure.value),
            )
            return False

        if not any(self.paths.values()):  # built from keys, not files
            return succeed(False)
        reading = deferToThread(load_keys, **self.paths)
        return reading.addCallbacks(loaded, failed)

    def describe(self) -> str:
        """For the log: which keys, never their content."""
        parts = []
        if self.keys.secret is not None:
            parts.append("a secret")
        parts.extend(key.source for key in self.keys.public)
        algorithms = ", ".join(sorted(self.keys.algorithms))
        return f"{', '.join(parts) or 'no keys'} ({algorithms or 'no algorithms'})"

    def verify(self, token: str, room: str, now: float | None = None) -> Identity:
        """The Identity `token` vouches for in `room` ("" is the default
        room) at `now` (epoch seconds), or TokenRefused."""
        if now is None:
            now = time.time()
        if not isinstance(token, str):
            raise _malformed("the token must be a string")
        if len(token) > MAX_TOKEN:
            raise _malformed(f"the token is longer than {MAX_TOKEN} characters")
        if not token.isascii():
            raise _malformed("this is not a token chatbox can read")
        header = _header(token)
        keys = self.keys
        alg = header.get("alg")
        accepted = keys.algorithms
        if not isinstance(alg, str) or alg not in accepted:
            raise TokenRefused(
                "TokenAlgorithm",
                f"this server does not accept tokens signed with {_shown(alg)} "
                f"(it accepts {', '.join(sorted(accepted))})",
            )
        claims, source = self._checked(token, alg, header.get("kid"), keys)
        return self._identity(claims, source, room, now)

    def _candidates(
        self, alg: str, kid: object, keys: Keys
    ) -> Iterable[tuple[str, Any]]:
        """(source, key) pairs that may have signed an `alg` token: the
        secret alone for HS*, else the public keys of that algorithm; a
        `kid` picks among the JWKS keys (a PEM key has none, so it is
        tried whatever the kid)."""
        if alg.startswith("HS"):
            assert keys.secret is not None  # alg is in keys.algorithms
            return [("secret", keys.secret)]
        return [
            (key.source, key.key)
            for key in keys.public
            if alg in key.algorithms
            and (kid is None or key.kid is None or key.kid == kid)
        ]

    def _checked(
        self, token: str, alg: str, kid: object, keys: Keys
    ) -> tuple[dict[str, Any], str]:
        candidates = list(self._candidates(alg, kid, keys))
        if not candidates:
            raise TokenRefused(
                "TokenBadSignature",
                f"no key this server trusts has the id {_shown(kid)}"
                if kid is not None
                else "the token is not signed by a key this server trusts",
            )
        for source, key in candidates:
            try:
                decoded = _DECODER.decode_complete(token, key, algorithms=[alg])
            except InvalidSignatureError:
                continue
            except PyJWTError:
                raise _malformed("this is not a token chatbox can read") from None
            return decoded["payload"], source
        raise TokenRefused(
            "TokenBadSignature", "the token is not signed by a key this server trusts"
        )

    def _identity(
        self, claims: dict[str, Any], source: str, room: str, now: float
    ) -> Identity:
        """The signed claims, checked in the order a person can act on."""
        name = claims.get("sub")
        if not isinstance(name, str):
            raise _malformed("the token names no nickname (sub)")
        if not is_valid_name(name):
            raise _malformed("the token's nickname (sub) is not a valid nickname")
        if "exp" not in claims:
            raise _malformed("the token has no expiry (exp)")
        expires = _number(claims, "exp")
        not_before = _number(claims, "nbf")
        issued = _number(claims, "iat")
        rooms = _rooms(claims)
        roles = _string_list(claims, "roles", MAX_ROLES)
        token_id = claims.get("jti")
        if token_id is not None and not (
            isinstance(token_id, str)
            and 0 < len(token_id) <= MAX_TOKEN_ID
            and token_id.isprintable()
        ):
            raise _malformed(
                f"the token's jti must be printable, 1 to {MAX_TOKEN_ID} characters"
            )
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise TokenRefused(
                "TokenWrongIssuer",
                f"the token was not issued by {self.issuer!r}, the issuer "
                "this server expects",
            )
        if self.audience is not None:
            audience = claims.get("aud")
            audiences = audience if isinstance(audience, list) else [audience]
            if self.audience not in audiences:
                raise TokenRefused(
                    "TokenWrongAudience",
                    f"the token is not meant for {self.audience!r}, this server",
                )
        assert expires is not None
        if expires <= now - self.leeway:
            raise TokenRefused("TokenExpired", f"the token expired at {_when(expires)}")
        if not_before is not None and not_before > now + self.leeway:
            raise TokenRefused(
                "TokenNotYetValid",
                f"the token is not valid before {_when(not_before)}",
            )
        if issued is not None and issued > now + self.leeway:
            raise TokenRefused(
                "TokenNotYetValid",
                f"the token says it was issued at {_when(issued)}, which is "
                "still to come (is a clock wrong?)",
            )
        if rooms is not None and room not in rooms:
            raise TokenRefused(
                "TokenWrongRoom", f"the token is not good in {_room_named(room)}"
            )
        return Identity(
            name=name,
            expires=int(expires * 1000),
            rooms=rooms,
            roles=frozenset(roles or ()) & KNOWN_ROLES,
            source=source,
            token_id=token_id,
        )
