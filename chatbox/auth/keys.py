# -*- test-case-name: tests.unit.test_auth_keys -*-
"""The keys tokens are checked against, read from the operator's files.

Each key carries the algorithms it may check, decided here from the key's
own type, never from a token: the HMAC secret checks HS* only, an RSA key
RS*/PS* only, an EC key the ES* of its curve, an OKP key EdDSA. A public
key is therefore never an HMAC secret, whatever a token's header says.

The files are read at start-up and again on SIGHUP (on a thread: these
functions block). A file that cannot be used raises KeyFileError, whose
message names the file and why, and never holds any of its content.
"""

import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK
from jwt.exceptions import PyJWTError

__all__ = [
    "MIN_SECRET_BYTES",
    "KeyFileError",
    "Keys",
    "PublicKey",
    "load_jwks",
    "load_keys",
    "load_public_key",
    "load_secret",
    "secret_algorithms",
]

# The server's own secret: at least 256 bits, the size of HS256's hash.
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
# A key file is a few KiB; a JWKS of a few dozen keys well under this.
MAX_FILE_BYTES = 1024 * 1024
# The JWKS keys chatbox tries for a token without a `kid`.
MAX_JWKS_KEYS = 100

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
# RFC 7518 section 3.2: an HMAC key at least as long as the hash output.
HMAC_ALGORITHMS = {"HS256": 32, "HS384": 48, "HS512": 64}


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class PublicKey:
    """One trusted public key: `source` is "public-key" or "jwks:KID" (for
    audit lines), `kid` the id a token may name it by (JWKS only)."""

    source: str
    key: Any
    algorithms: frozenset[str]
    kid: str | None = None


@dataclass(frozen=True)
class Keys:
    """Everything a Verifier trusts, replaced whole on each reload."""

    secret: bytes | None = None
    public: tuple[PublicKey, ...] = ()

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms some configured key may check."""
        found = set(secret_algorithms(self.secret)) if self.secret else set()
        for key in self.public:
            found |= key.algorithms
        return frozenset(found)


def secret_algorithms(secret: bytes) -> frozenset[str]:
    """The HS* algorithms a secret this long may check (and sign)."""
    return frozenset(
        name for name, least in HMAC_ALGORITHMS.items() if len(secret) >= least
    )


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise KeyFileError(f"{what} {path}: cannot read it: {e.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise KeyFileError(f"{what} {path}: larger than {MAX_FILE_BYTES} bytes")
    return data


def load_secret(path: str) -> bytes:
    """The HMAC secret: the file's bytes, one trailing newline (LF or CRLF)
    stripped, at least MIN_SECRET_BYTES."""
    data = _read(path, "--auth-secret")
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if len(data) < MIN_SECRET_BYTES:
        raise KeyFileError(
            f"--auth-secret {path}: {len(data)} bytes, needs at least "
            f"{MIN_SECRET_BYTES} (head -c 32 /dev/urandom | base64 > {path})"
        )
    return data


def _algorithms_of(key: Any, where: str) -> frozenset[str]:
    """The algorithms a public key's type allows, or KeyFileError."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyFileError(
                f"{where}: an RSA key of {key.key_size} bits, needs at least "
                f"{MIN_RSA_BITS}"
            )
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise KeyFileError(
                f"{where}: an EC key on curve {key.curve.name}, "
                "needs P-256, P-384 or P-521"
            )
        return frozenset({algorithm})
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return frozenset({"EdDSA"})
    raise KeyFileError(
        f"{where}: a {type(key).__name__}, needs an RSA, EC or Ed25519/Ed448 key"
    )


def load_public_key(path: str) -> PublicKey:
    """One PEM public key (not a private key, not a certificate)."""
    data = _read(path, "--auth-public-key")
    where = f"--auth-public-key {path}"
    if b"PRIVATE KEY" in data:
        raise KeyFileError(
            f"{where}: holds a private key; give chatbox the public key only "
            "(openssl pkey -in KEY -pubout)"
        )
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError(f"{where}: not a PEM public key") from None
    except Exception:  # an unsupported algorithm, in cryptography's words
        raise KeyFileError(f"{where}: not a public key chatbox can use") from None
    return PublicKey("public-key", key, _algorithms_of(key, where))


def _jwk(entry: object, number: int, path: str) -> PublicKey:
    where = f"--auth-jwks {path} key {number}"
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where}: not a JSON object")
    kty = entry.get("kty")
    if kty == "oct":
        raise KeyFileError(
            f"{where}: a symmetric (oct) key; an HMAC secret belongs in --auth-secret"
        )
    if kty not in ("RSA", "EC", "OKP"):
        raise KeyFileError(f"{where}: kty must be RSA, EC or OKP")
    kid = entry.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise KeyFileError(f"{where}: kid must be a non-empty string")
    if kid is not None and (len(kid) > 200 or not kid.isprintable()):
        raise KeyFileError(f"{where}: kid must be printable, at most 200 characters")
    if any(field in entry for field in ("d", "p", "q", "dp", "dq", "qi")):
        raise KeyFileError(
            f"{where}: holds private key parts; give chatbox the public keys only"
        )
    use = entry.get("use")
    if use is not None and use != "sig":
        raise KeyFileError(f"{where}: use is {use!r}, not 'sig'")
    try:
        # The key's material only: its `alg` is checked below, against
        # what the material is.
        key = PyJWK({k: v for k, v in entry.items() if k != "alg"}).key
    except (PyJWTError, ValueError, TypeError, KeyError):
        raise KeyFileError(f"{where}: not a public key chatbox can read") from None
    allowed = _algorithms_of(key, where)
    alg = entry.get("alg")
    if alg is not None:
        if alg not in allowed:
            raise KeyFileError(f"{where}: alg {alg!r} does not fit a {kty} key")
        allowed = frozenset({alg})
    return PublicKey(f"jwks:{kid or '#' + str(number)}", key, allowed, kid)


def load_jwks(path: str) -> tuple[PublicKey, ...]:
    """A JWKS document's keys, every one usable, asymmetric, kids unique."""
    data = _read(path, "--auth-jwks")
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError(f"--auth-jwks {path}: not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise KeyFileError(
            f'--auth-jwks {path}: needs {{"keys": [...]}} with at least one key'
        )
    if len(entries) > MAX_JWKS_KEYS:
        raise KeyFileError(
            f"--auth-jwks {path}: {len(entries)} keys, at most {MAX_JWKS_KEYS}"
        )
    keys = tuple(_jwk(entry, number, path) for number, entry in enumerate(entries, 1))
    kids = [key.kid for key in keys if key.kid is not None]
    if len(set(kids)) != len(kids):
        raise KeyFileError(f"--auth-jwks {path}: two keys have the same kid")
    return keys


def load_keys(
    secret: str | None = None,
    public_key: str | None = None,
    jwks: str | None = None,
) -> Keys:
    """Read every configured file (blocking); KeyFileError for the first
    bad one, so a reload either takes all the new keys or none."""
    public: list[PublicKey] = []
    if public_key is not None:
        public.append(load_public_key(public_key))
    if jwks is not None:
        public.extend(load_jwks(jwks))
    return Keys(
        load_secret(secret) if secret is not None else None,
        tuple(public),
    )
