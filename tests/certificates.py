"""Certificates made in the test with `cryptography`: a CA, and leaves it
signs with the serial, dates and key a test asks for (trustme picks its own
serials and dates, and a reload test needs to tell two leaves apart)."""

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl

DAY = datetime.timedelta(days=1)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def new_key() -> ec.EllipticCurvePrivateKey:
    """P-256: a handshake costs a fraction of RSA's, for 200 clients."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Leaf:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def not_after(self) -> float:
        return self.certificate.not_valid_after_utc.timestamp()

    @property
    def fingerprint(self) -> str:
        digest = self.certificate.fingerprint(hashes.SHA256())
        return "sha256:" + ":".join(f"{b:02X}" for b in digest)


class CA:
    def __init__(self, common: str = "chatbox test CA") -> None:
        self.key = new_key()
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(_name(common))
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(now - DAY)
            .not_valid_after(now + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def client_options(self):
        """What a client that trusts only this CA uses for wss://."""
        root = ssl.Certificate.loadPEM(self.cert_pem)
        return ssl.optionsForClientTLS("localhost", trustRoot=root)

    def issue(
        self,
        serial: int,
        days: float = 90,
        start_days_ago: float = 1,
        key: ec.EllipticCurvePrivateKey | None = None,
        common: str = "localhost",
    ) -> Leaf:
        """A leaf for localhost valid from `start_days_ago` days ago for
        `days` days (negative `start_days_ago`: not valid yet)."""
        key = key or new_key()
        now = datetime.datetime.now(datetime.UTC)
        start = now - start_days_ago * DAY
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(start + days * DAY)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return Leaf(certificate, key)


def install(leaf: Leaf, cert: Path, key: Path) -> None:
    """Put a pair in place as a deploy hook should: each file whole, by
    rename, so the server never reads half of one."""
    for path, data in ((cert, leaf.cert_pem), (key, leaf.key_pem)):
        temporary = path.with_suffix(".new")
        temporary.write_bytes(data)
        temporary.replace(path)
