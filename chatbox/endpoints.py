"""Where chatbox listens: `--port` and the `--tls-cert`/`--tls-key` shortcut.

The TLS shortcut builds the context itself rather than an `ssl:` endpoint
string, so that a certificate file holding a full chain (leaf first, as
Let's Encrypt's fullchain.pem does) serves the whole chain.
"""

import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import endpoints, ssl
from twisted.internet.interfaces import IStreamServerEndpoint

__all__ = ["EndpointError", "server_endpoint", "tls_options"]

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


class EndpointError(Exception):
    """The listening options cannot be turned into an endpoint."""


def endpoint_description(port: str) -> str:
    """A bare number means TCP on every interface, as v2 listened."""
    return f"tcp:{port}" if port.isdigit() else port


def _check_port_number(description: str, option: str = "--port") -> None:
    """Twisted takes tcp:70000 and fails only when listening, with a trace."""
    kind, _, rest = description.partition(":")
    number = rest.split(":", 1)[0]
    if kind in ("tcp", "ssl", "tls") and number.isdigit() and int(number) > 65535:
        raise EndpointError(f"{option} {number} is not a port number (0..65535)")


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise EndpointError(f"cannot read the TLS {what} {path}: {e.strerror}") from e


def tls_options(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    certificates = _PEM_CERTIFICATE.findall(_read(cert_path, "certificate"))
    if not certificates:
        raise EndpointError(f"no PEM certificate found in {cert_path}")
    try:
        leaf, *chain = (x509.load_pem_x509_certificate(pem) for pem in certificates)
        key = serialization.load_pem_private_key(_read(key_path, "key"), password=None)
        options = ssl.CertificateOptions(
            privateKey=key, certificate=leaf, extraCertChain=chain
        )
        options.getContext()  # A key that does not match fails here, at start-up.
    except (SSL.Error, ValueError, TypeError) as e:
        raise EndpointError(
            f"TLS certificate {cert_path} and key {key_path} cannot be used: {e}"
        ) from e
    return options


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


def server_endpoint(
    reactor: object,
    port: str,
    tls: tuple[str, str] | None = None,
    option: str = "--port",
) -> tuple[IStreamServerEndpoint, str]:
    """The endpoint to listen on and its URL scheme, `ws` or `wss`.

    `tls` is the (certificate, key) pair; tap's options refuse one without
    the other, so a half pair cannot reach here. `option` is what errors
    call the value (`--admin-port` for the admin listener).
    """
    if tls is not None:
        _check_port_number(endpoint_description(port), option)
        number, interface = _tcp_arguments(port)
        options = tls_options(*tls)
        return endpoints.SSL4ServerEndpoint(
            reactor, number, options, interface=interface
        ), "wss"
    description = endpoint_description(port)
    _check_port_number(description, option)
    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise EndpointError(f"{option} {port!r} is not an endpoint: {e}") from e
    scheme = "wss" if description.split(":", 1)[0] in ("ssl", "tls") else "ws"
    return endpoint, scheme
