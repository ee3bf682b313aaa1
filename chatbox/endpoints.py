"""Where chatbox listens: `--port` and the `--tls-cert`/`--tls-key` shortcut.

The TLS shortcut builds the context itself rather than an `ssl:` endpoint
string, so that a certificate file holding a full chain (leaf first, as
Let's Encrypt's fullchain.pem does) serves the whole chain, and so that the
pair can be read again while the server runs (`ServedCertificate.reload`,
on SIGHUP or `POST /v1/tls/reload`): a renewal needs no restart.

Twisted's TLS wrapper asks the object it was given for an OpenSSL
connection at every accept (`serverConnectionForTLS`, an
IOpenSSLServerConnectionCreator; older Twisted called `getContext()` per
connection instead, which this answers too). ServedCertificate hands each
one the context of the pair in force at that moment, so swapping the pair
changes only handshakes that begin afterwards; an OpenSSL connection keeps
the context it was made with, so connections already open are untouched.
"""

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from OpenSSL import SSL
from twisted.internet import endpoints, ssl
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import (
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IStreamServerEndpoint,
)
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "CertificateError",
    "CertificateInfo",
    "EndpointError",
    "ServedCertificate",
    "load_pair",
    "server_endpoint",
    "tls_port",
]

log = Logger()

# Larger RSA keys are refused: a handshake's signature grows with the cube
# of the size, and it runs on the reactor.
MAX_RSA_BITS = 8192

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
# A certificate chain or a key is a few KiB; a path pointing at something
# else (a log, a disk image) is refused without reading it all.
MAX_FILE_BYTES = 1024 * 1024


class EndpointError(Exception):
    """The listening options cannot be turned into an endpoint."""


class CertificateError(EndpointError):
    """The TLS pair cannot be served; the message names the file and why."""


def endpoint_description(port: str) -> str:
    """A bare number means TCP on every interface, as v2 listened."""
    return f"tcp:{port}" if port.isdigit() else port


def _check_port_number(description: str, option: str = "--port") -> None:
    """Twisted takes tcp:70000 and fails only when listening, with a trace."""
    kind, _, rest = description.partition(":")
    number = rest.split(":", 1)[0]
    if kind in ("tcp", "ssl", "tls") and number.isdigit() and int(number) > 65535:
        raise EndpointError(f"{option} {number} is not a port number (0..65535)")


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def _read(path: str, what: str) -> bytes:
    """The file's bytes. Only a regular file: opening a FIFO (or a device)
    without O_NONBLOCK would wait for a writer, holding up this and every
    later reload for good."""
    try:
        with open(path, "rb", opener=_nonblocking) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise CertificateError(f"the TLS {what} {path} is not a regular file")
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise CertificateError(
            f"cannot read the TLS {what} {path}: {e.strerror}"
        ) from e
    if len(data) > MAX_FILE_BYTES:
        raise CertificateError(
            f"the TLS {what} {path} is larger than {MAX_FILE_BYTES // 1024} KiB: "
            f"not a PEM {what}"
        )
    return data


@dataclass(frozen=True)
class CertificateInfo:
    """What an operator checks about the certificate served: the leaf's."""

    subject: str
    issuer: str
    serial: int
    not_before: datetime
    not_after: datetime
    fingerprint: str  # SHA-256 of the DER, colon-separated hex, as browsers show

    @classmethod
    def of(cls, leaf: x509.Certificate) -> "CertificateInfo":
        digest = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER))
        return cls(
            subject=leaf.subject.rfc4514_string(),
            issuer=leaf.issuer.rfc4514_string(),
            serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            fingerprint=":".join(f"{b:02X}" for b in digest.digest()),
        )

    def as_json(self) -> dict[str, Any]:
        """The admin API's shape: times in epoch ms, as its other times are;
        the serial in hex, as `openssl x509 -serial` prints it."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": f"{self.serial:X}",
            "not_before": int(self.not_before.timestamp() * 1000),
            "not_after": int(self.not_after.timestamp() * 1000),
            "fingerprint": "sha256:" + self.fingerprint,
        }

    def said(self) -> str:
        """One log line's worth."""
        return (
            f"subject {self.subject}, serial {self.serial:X}, valid until "
            f"{_iso(self.not_after)}, sha256 {self.fingerprint}"
        )

    def dates_refusal(self, now: datetime) -> str | None:
        """Why clients would refuse it at `now`, if they would."""
        if now > self.not_after:
            return f"it expired on {_iso(self.not_after)}"
        if now < self.not_before:
            return f"it is not valid until {_iso(self.not_before)}"
        return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LoadedPair:
    options: ssl.CertificateOptions
    info: CertificateInfo


def _public(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signs_for(key: Any, leaf: x509.Certificate) -> bool:
    """Whether a signature by `key` verifies with the certificate's public
    key: with cryptography's RSA check skipped (see load_pair), a key whose
    public half matches but whose private half is damaged would otherwise
    pass every other check and fail every handshake. Key types without a
    plain sign/verify here pass."""
    probe = b"chatbox TLS reload probe"
    public = leaf.public_key()
    try:
        if isinstance(key, rsa.RSAPrivateKey):
            signature = key.sign(probe, padding.PKCS1v15(), hashes.SHA256())
            public.verify(signature, probe, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            signature = key.sign(probe, ec.ECDSA(hashes.SHA256()))
            public.verify(signature, probe, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            public.verify(key.sign(probe), probe)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def load_pair(cert_path: str, key_path: str) -> LoadedPair:
    """Read and check a certificate chain and its key, and build the TLS
    context from them (blocking: at start-up, or on a thread). Every refusal
    is a CertificateError naming the file and what is wrong with it."""
    found = _PEM_CERTIFICATE.findall(_read(cert_path, "certificate"))
    if not found:
        raise CertificateError(f"no PEM certificate found in {cert_path}")
    certificates = []
    for number, pem in enumerate(found, 1):
        try:
            certificates.append(x509.load_pem_x509_certificate(pem))
        except ValueError as e:
            raise CertificateError(
                f"certificate {number} in {cert_path} cannot be read: {e}"
            ) from None
    leaf, *chain = certificates
    key_pem = _read(key_path, "key")
    if not _PEM_PRIVATE_KEY.search(key_pem):
        raise CertificateError(f"no PEM private key found in {key_path}")
    try:
        # cryptography's RSA key check holds the GIL throughout (600 ms for
        # a 4096-bit key, the reactor stalled as long: bench/tls_reload.py).
        # The key is the operator's own file, and that it is the
        # certificate's is checked below and again by OpenSSL.
        key = serialization.load_pem_private_key(
            key_pem, password=None, unsafe_skip_rsa_key_validation=True
        )
    except TypeError:
        raise CertificateError(
            f"the TLS key {key_path} is encrypted: chatbox needs it without a "
            "passphrase (keep it readable by the service user alone)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CertificateError(f"the TLS key {key_path} cannot be read: {e}") from None
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size > MAX_RSA_BITS:
        # Every handshake signs with it: a 16384-bit key costs some 0.5 s
        # of the reactor per connection, so one client reconnecting in a
        # loop stalls everyone (the attacker review).
        raise CertificateError(
            f"the TLS key {key_path} is RSA of {key.key_size} bits: each "
            f"handshake would take the server most of a second; use {MAX_RSA_BITS} "
            "bits or fewer (2048 or 3072 is usual), or an EC key"
        )
    mine = _public(key.public_key())
    if _public(leaf.public_key()) != mine:
        matching = [
            n for n, c in enumerate(chain, 2) if _public(c.public_key()) == mine
        ]
        hint = (
            f"; it matches certificate {matching[0]} of the file: put the "
            "server's own certificate first"
            if matching
            else ""
        )
        raise CertificateError(
            f"TLS certificate {cert_path} and key {key_path} cannot be used: "
            f"the key does not match the certificate{hint}"
        )
    if not _signs_for(key, leaf):
        raise CertificateError(
            f"the TLS key {key_path} is damaged: what it signs, the certificate "
            f"in {cert_path} does not verify"
        )
    try:
        options = ssl.CertificateOptions(
            privateKey=key, certificate=leaf, extraCertChain=chain
        )
        options.getContext()  # built here, not at the first handshake
    except (SSL.Error, ValueError, TypeError) as e:
        raise CertificateError(
            f"TLS certificate {cert_path} and key {key_path} cannot be used: {e}"
        ) from None
    return LoadedPair(options, CertificateInfo.of(leaf))


@dataclass(frozen=True)
class Reloaded:
    """What a reload put in force; `changed` is False when the files held
    the certificate already served."""

    info: CertificateInfo
    changed: bool


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ServedCertificate:
    """The certificate and key the chat port serves, replaceable while it
    listens. Owns the pair in force: only `reload` changes it, on the reactor
    thread, in one assignment, once the new pair has been read and checked
    on a thread. Reloads run one at a time, in the order asked, so a slow
    read of old files never lands after a newer one."""

    def __init__(
        self,
        cert_path: str,
        key_path: str,
        pair: LoadedPair,
        now: Any = None,
    ) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self._pair = pair
        self._lock = DeferredLock()
        self._now = now or (lambda: datetime.now(UTC))

    @classmethod
    def load(cls, cert_path: str, key_path: str) -> "ServedCertificate":
        """At start-up, before the reactor runs; CertificateError if bad. A
        certificate out of its dates is served (there is nothing older to
        keep) with a warning."""
        served = cls(cert_path, key_path, load_pair(cert_path, key_path))
        why = served.info.dates_refusal(served._now())
        if why is not None:
            log.warn(
                "TLS certificate {path}: clients will refuse it: {why}",
                path=cert_path,
                why=why,
            )
        return served

    @property
    def info(self) -> CertificateInfo:
        return self._pair.info

    def expiry(self) -> float:
        """notAfter of the leaf served now, as Unix time (for /metrics)."""
        return self._pair.info.not_after.timestamp()

    # -- what Twisted's TLS wrapper calls, once per accepted connection --

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        return self._pair.options.serverConnectionForTLS(protocol)

    def getContext(self) -> SSL.Context:
        return self._pair.options.getContext()

    # -- reloading --

    def reload(self, by: str = "SIGHUP") -> "Deferred[Reloaded]":
        """Read the files again on a thread and serve them from the next
        handshake on. Fails with CertificateError (the old pair stays in
        force) if they cannot be served; either way one log line says what
        happened, naming `by` (who asked)."""
        return self._lock.run(self._reload, by)

    def _reload(self, by: str) -> "Deferred[Reloaded]":
        def check(pair: LoadedPair) -> Reloaded:
            why = pair.info.dates_refusal(self._now())
            if why is not None:
                raise CertificateError(f"the certificate in {self.cert_path}: {why}")
            changed = pair.info != self._pair.info
            self._pair = pair
            log.info(
                "TLS certificate reloaded ({by}){same}: {said}",
                by=by,
                same="" if changed else ", the same one as before",
                said=pair.info.said(),
            )
            return Reloaded(pair.info, changed)

        def refused(failure: Failure) -> Failure:
            failure.trap(CertificateError)
            log.error(
                "TLS certificate NOT reloaded ({by}), the previous one (valid "
                "until {until}) stays in force: {why}",
                by=by,
                until=_iso(self._pair.info.not_after),
                why=str(failure.value),
            )
            return failure

        loaded = deferToThread(load_pair, self.cert_path, self.key_path)
        return loaded.addCallback(check).addErrback(refused)

    def on_hangup(self) -> "Deferred[None]":
        """For SIGHUP (chatbox.admin.tokens.ReloadService): the outcome is
        in the log, and a refusal is not an error of the process."""
        done = self.reload("SIGHUP")
        done.addErrback(lambda failure: failure.trap(CertificateError))
        return done.addCallback(lambda _: None)


def _tcp_arguments(description: str) -> tuple[int, str]:
    """Port and interface from a bare number or a `tcp:` description."""
    if description.isdigit():
        return int(description), ""
    # Endpoint strings escape ':' as '\:', as in interface=\:\:1.
    parts = [p.replace("\0", ":") for p in description.replace("\\:", "\0").split(":")]
    if parts[0] != "tcp" or len(parts) < 2 or not parts[1].isdigit():
        raise EndpointError(
            "--tls-cert/--tls-key need --port to be a number or a tcp: endpoint, "
            f"not {description!r}"
        )
    interface = ""
    for option in parts[2:]:
        key, _, value = option.partition("=")
        if key != "interface":
            raise EndpointError(f"unsupported option {key!r} with --tls-cert")
        interface = value
    return int(parts[1]), interface


def tls_port(port: str, option: str = "--port") -> tuple[int, str]:
    """The port number and interface the TLS shortcut listens on, or
    EndpointError: checked before the pair is read, so a wrong --port is
    what start-up complains about first."""
    _check_port_number(endpoint_description(port), option)
    return _tcp_arguments(port)


def server_endpoint(
    reactor: object,
    port: str,
    tls: "ServedCertificate | tuple[str, str] | None" = None,
    option: str = "--port",
) -> tuple[IStreamServerEndpoint, str]:
    """The endpoint to listen on and its URL scheme, `ws` or `wss`.

    `tls` is the served pair (tap loads it, to reload it later) or the
    (certificate, key) paths; tap's options refuse one without the other, so
    a half pair cannot reach here. `option` is what errors call the value
    (`--admin-port` for the admin listener).
    """
    if tls is not None:
        number, interface = tls_port(port, option)
        if not isinstance(tls, ServedCertificate):
            tls = ServedCertificate.load(*tls)
        return endpoints.SSL4ServerEndpoint(
            reactor, number, tls, interface=interface
        ), "wss"
    description = endpoint_description(port)
    _check_port_number(description, option)
    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise EndpointError(f"{option} {port!r} is not an endpoint: {e}") from e
    scheme = "wss" if description.split(":", 1)[0] in ("ssl", "tls") else "ws"
    return endpoint, scheme
