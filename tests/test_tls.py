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
