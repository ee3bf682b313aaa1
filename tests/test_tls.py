"""wss:// with a real handshake against a certificate made for the test."""

import pytest
import trustme
from pytest_twisted import ensureDeferred
from twisted.internet import ssl
from twisted.internet.error import ConnectError

from tests.client import connect
from tests.server import start_server


def client_tls(ca: trustme.CA):
    root = ssl.Certificate.loadPEM(ca.cert_pem.bytes())
    return ssl.optionsForClientTLS("localhost", trustRoot=root)


@pytest.fixture
def tls_files(tmp_path):
    """A leaf issued by an intermediate: clients that trust only the root can
    verify it only if the server sends the whole chain."""
    ca = trustme.CA()
    leaf = ca.create_child_ca().issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return ca, cert, key


@ensureDeferred
async def test_register_send_get_over_verified_wss(tls_files, data_file):
    ca, cert, key = tls_files
    server = await start_server(
        data_file, f"--tls-cert={cert}", f"--tls-key={key}", scheme="wss"
    )
    try:
        an = await connect(server.url, tls=client_tls(ca))
        bo = await connect(server.url, tls=client_tls(ca))
        assert (await an.register("An"))["status"] is True
        assert (await bo.register("Bo"))["status"] is True
        reply = await an.say("bí mật")
        assert reply["status"] is True
        assert (await bo.event())["content"] == "bí mật"
        history = await bo.get()
        assert [m["content"] for m in history["data"]["message"]] == ["bí mật"]
        assert history["data"]["online"] == ["An", "Bo"]
    finally:
        await server.stop()


@ensureDeferred
async def test_a_client_that_does_not_trust_the_certificate_cannot_connect(
    tls_files, data_file
):
    _, cert, key = tls_files
    server = await start_server(
        data_file, f"--tls-cert={cert}", f"--tls-key={key}", scheme="wss"
    )
    try:
        with pytest.raises((ConnectError, ConnectionError, Exception)):
            await connect(server.url, tls=client_tls(trustme.CA()))
        # The server is unharmed.
        ca = tls_files[0]
        an = await connect(server.url, tls=client_tls(ca))
        assert (await an.register("An"))["status"] is True
    finally:
        await server.stop()


def _https_get_with_alpn(port: int, ca: trustme.CA, path: str) -> tuple[str, bytes]:
    """What a browser (or curl, or Prometheus) does: offer h2 and http/1.1
    by ALPN, then speak HTTP/1.1. Blocking; run on a thread."""
    import socket
    import ssl as stdlib_ssl

    context = stdlib_ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    head = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(head.encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return tls.selected_alpn_protocol(), answer


@ensureDeferred
async def test_clients_that_offer_alpn_get_http_1_1(tls_files, data_file):
    """Every browser offers ALPN (h2 first); Twisted's TLS answers from the
    wrapped factory's protocol list, and a factory with none aborted every
    such handshake (`tlsv1 alert internal error`): the page never loaded."""
    from twisted.internet.threads import deferToThread

    ca, cert, key = tls_files
    server = await start_server(
        data_file, f"--tls-cert={cert}", f"--tls-key={key}", scheme="wss"
    )
    try:
        chosen, answer = await deferToThread(
            _https_get_with_alpn, server.port, ca, "/healthz"
        )
        assert chosen == "http/1.1"
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        # Prometheus scraping a TLS-only port does the same.
        chosen, answer = await deferToThread(
            _https_get_with_alpn, server.port, ca, "/metrics"
        )
        assert chosen == "http/1.1" and b"chatbox_connections" in answer
    finally:
        await server.stop()
