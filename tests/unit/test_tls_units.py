"""The reloadable TLS pair (chatbox/endpoints.py ServedCertificate): what
load_pair refuses and why, the swap on a real in-process TLS listener
(connections open before keep their session, new ones get the new
certificate), reloads one at a time, the admin endpoint and tap's wiring.
tests/test_tls_reload.py does the same under twistd with 200 clients."""

import os
import threading
from pathlib import Path

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from chatbox import endpoints, tap
from chatbox.endpoints import CertificateError, ServedCertificate, load_pair
from chatbox.metrics import Metrics
from tests.certificates import CA, install, key_pem, new_key
from tests.server import options
from tests.unit.test_admin_api import Admin

TIMEOUT = 10


@pytest.fixture
def ca() -> CA:
    return CA()


@pytest.fixture
def pair(tmp_path: Path, ca: CA) -> tuple[Path, Path]:
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    install(ca.issue(101), cert, key)
    return cert, key


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def lines(events: list[dict], word: str) -> list[str]:
    return [t for t in (formatEvent(e) or "" for e in events) if word in t]


# -- what load_pair refuses --


def test_a_good_chain_is_read_with_what_an_operator_checks(pair, ca):
    cert, key = pair
    leaf = ca.issue(0xBEEF, days=30)
    cert.write_bytes(leaf.cert_pem + ca.cert_pem)  # leaf, then the issuer
    key.write_bytes(leaf.key_pem)
    loaded = load_pair(str(cert), str(key))
    shown = loaded.info.as_json()
    assert shown["subject"] == "CN=localhost"
    assert shown["issuer"] == "CN=chatbox test CA"
    assert shown["serial"] == "BEEF"
    assert shown["fingerprint"] == leaf.fingerprint
    assert shown["not_after"] == int(leaf.not_after * 1000)
    assert len(loaded.options.extraCertChain) == 1


def _spoil(case: str, cert: Path, key: Path, ca: CA) -> None:
    leaf = ca.issue(202)
    cert.write_bytes(leaf.cert_pem)
    key.write_bytes(leaf.key_pem)
    if case == "garbage":
        cert.write_bytes(b"\x00\xff" * 500)
    elif case == "empty":
        cert.write_bytes(b"")
    elif case == "only a key":
        cert.write_bytes(leaf.key_pem)
    elif case == "mismatch":
        key.write_bytes(key_pem(new_key()))
    elif case == "wrong order":
        cert.write_bytes(ca.issue(203).cert_pem + leaf.cert_pem)
    elif case == "missing cert":
        cert.unlink()
    elif case == "missing key":
        key.unlink()
    elif case == "a directory":
        key.unlink()
        key.mkdir()
    elif case == "key garbage":
        key.write_bytes(
            b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n"
        )
    elif case == "a device":
        cert.unlink()
        cert.symlink_to("/dev/zero")
    elif case == "a certificate as the key":
        key.write_bytes(leaf.cert_pem)
    elif case == "huge":
        cert.write_bytes(leaf.cert_pem + b"#" * (endpoints.MAX_FILE_BYTES + 1))
    elif case == "damaged":
        cert.write_bytes(leaf.cert_pem.replace(b"\n", b"\n!", 2))
    else:
        raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("garbage", "no PEM certificate found in {cert}"),
        ("empty", "no PEM certificate found in {cert}"),
        ("only a key", "no PEM certificate found in {cert}"),
        ("mismatch", "key {key} cannot be used: the key does not match"),
        ("wrong order", "it matches certificate 2 of the file: put the server's"),
        ("missing cert", "cannot read the TLS certificate {cert}: No such file"),
        ("missing key", "cannot read the TLS key {key}: No such file"),
        ("a directory", "cannot read the TLS key {key}: Is a directory"),
        ("key garbage", "the TLS key {key} cannot be read"),
        ("a device", "the TLS certificate {cert} is not a regular file"),
        ("a certificate as the key", "no PEM private key found in {key}"),
        ("huge", "the TLS certificate {cert} is larger than 1024 KiB"),
        ("damaged", "certificate 1 in {cert} cannot be read"),
    ],
)
def test_a_pair_that_cannot_be_served_is_refused_naming_the_file(pair, ca, case, says):
    cert, key = pair
    _spoil(case, cert, key, ca)
    with pytest.raises(CertificateError) as refused:
        load_pair(str(cert), str(key))
    assert says.format(cert=cert, key=key) in str(refused.value)


def test_a_fifo_is_refused_without_waiting_for_a_writer(pair):
    """`--tls-key /dev/stdin` or a named pipe: a read that waits for a
    writer would hold the reload lock, and every later reload, for good."""
    cert, key = pair
    key.unlink()
    os.mkfifo(key)
    outcome: list[BaseException | object] = []

    def read() -> None:
        try:
            outcome.append(load_pair(str(cert), str(key)))
        except BaseException as e:
            outcome.append(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():
        os.close(os.open(key, os.O_WRONLY | os.O_NONBLOCK))  # let it go
        reader.join(5)
        pytest.fail("the read waited for a writer")
    assert isinstance(outcome[0], CertificateError)
    assert f"the TLS key {key} is not a regular file" in str(outcome[0])


def test_a_damaged_key_whose_public_half_matches_is_refused(pair, ca):
    """Bit rot in an RSA key's private half: OpenSSL's pair check compares
    public halves only, so without a signature probe every handshake
    would fail after the swap."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    cert, key = pair
    good = rsa.generate_private_key(65537, 2048)
    n = good.private_numbers()
    damaged = rsa.RSAPrivateNumbers(
        n.p, n.q, n.d + 2, n.dmp1 + 2, n.dmq1 + 2, n.iqmp, n.public_numbers
    ).private_key(unsafe_skip_rsa_key_validation=True)
    cert.write_bytes(ca.issue(606, key=good).cert_pem)
    key.write_bytes(
        damaged.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(CertificateError, match=f"the TLS key {key} is damaged"):
        load_pair(str(cert), str(key))
    key.write_bytes(key_pem(good))
    assert load_pair(str(cert), str(key)).info.serial == 606


def test_an_oversized_rsa_key_is_refused(pair, ca, monkeypatch):
    """Each handshake signs with the key on the reactor: a 16384-bit one
    costs about half a second per connection. The cap is lowered here so
    the test need not make such a key (minutes of CPU)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from chatbox import endpoints

    cert, key = pair
    big = rsa.generate_private_key(65537, 3072)
    cert.write_bytes(ca.issue(707, key=big).cert_pem)
    key.write_bytes(key_pem(big))
    assert load_pair(str(cert), str(key)).info.serial == 707
    monkeypatch.setattr(endpoints, "MAX_RSA_BITS", 2048)
    with pytest.raises(CertificateError, match="is RSA of 3072 bits"):
        load_pair(str(cert), str(key))


def test_start_up_serves_an_expired_certificate_with_a_warning(pair, ca, logged):
    cert, key = pair
    install(ca.issue(303, days=10, start_days_ago=20), cert, key)
    served = ServedCertificate.load(str(cert), str(key))
    assert served.info.serial == 303
    assert lines(logged, "clients will refuse it: it expired on")


# -- the swap, on a real TLS listener --


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Reader(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.waiting: Deferred | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.callback(None)

    async def echo(self, data: bytes) -> bytes:
        self.received = b""
        self.waiting = Deferred()
        self.transport.write(data)
        await self.waiting.addTimeout(TIMEOUT, reactor)
        return self.received

    @property
    def serial(self) -> int:
        return self.transport.getPeerCertificate().to_cryptography().serial_number


class Listening:
    def __init__(self, served: ServedCertificate, ca: CA) -> None:
        self.ca = ca
        # What SSL4ServerEndpoint does with what tap gives it.
        self.port = reactor.listenSSL(
            0, Factory.forProtocol(Echo), served, interface="127.0.0.1"
        )

    async def client(self) -> Reader:
        endpoint = wrapClientTLS(
            self.ca.client_options(),
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port),
        )
        reader = await connectProtocol(endpoint, Reader())
        assert await reader.echo(b"hello") == b"hello"  # handshake done
        return reader


@ensureDeferred
async def test_new_handshakes_get_the_new_pair_and_open_ones_keep_theirs(
    pair, ca, logged
):
    cert, key = pair
    served = ServedCertificate.load(str(cert), str(key))
    metrics = Metrics()
    metrics.observe_tls(served.expiry)
    listening = Listening(served, ca)
    try:
        before = await listening.client()
        assert before.serial == 101
        renewed = ca.issue(102, days=20)
        install(renewed, cert, key)
        reloaded = await served.reload("test")
        assert reloaded.changed and reloaded.info.serial == 102
        after = await listening.client()
        assert after.serial == 102
        assert before.serial == 101
        assert await before.echo(b"still here") == b"still here"
        gauge = metrics.registry.get_sample_value(
            "chatbox_tls_certificate_expiry_timestamp_seconds"
        )
        assert gauge == pytest.approx(renewed.not_after)
        assert (
            Metrics().registry.get_sample_value(
                "chatbox_tls_certificate_expiry_timestamp_seconds"
            )
            is None
        ), "without --tls-cert the series is absent"
        assert lines(logged, "TLS certificate reloaded (test): subject CN=localhost")

        # A bad pair: refused, the served one stays, one line says why.
        key.write_bytes(key_pem(new_key()))
        with pytest.raises(CertificateError):
            await served.reload("test")
        assert (await listening.client()).serial == 102
        refusals = lines(logged, "NOT reloaded")
        assert len(refusals) == 1 and str(key) in refusals[0]
        assert served.info.serial == 102

        # The same files again: in force, and said to be unchanged.
        install(renewed, cert, key)
        again = await served.reload("test")
        assert not again.changed
        for reader in (before, after):
            reader.transport.loseConnection()
    finally:
        await listening.port.stopListening()


@ensureDeferred
async def test_sighup_refusal_is_logged_not_raised(pair, ca, logged):
    cert, key = pair
    served = ServedCertificate.load(str(cert), str(key))
    cert.write_bytes(b"nothing")
    assert await served.on_hangup() is None
    assert lines(logged, "NOT reloaded (SIGHUP)")


@ensureDeferred
async def test_reloads_run_one_at_a_time_in_the_order_asked(pair, ca, monkeypatch):
    """An operator's reload whose read is slow (a stalled disk) must not
    land after a SIGHUP sent later, for newer files."""
    cert, key = pair
    served = ServedCertificate.load(str(cert), str(key))
    read, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def load(cert_path: str, key_path: str):
        # Files are read on a pool thread: the reactor never waits on a disk.
        assert threading.current_thread() is not threading.main_thread()
        loaded = load_pair(cert_path, key_path)
        calls.append(f"{loaded.info.serial}")
        if len(calls) == 1:
            read.set()
            release.wait(TIMEOUT)  # read, but slow to come back
        return loaded

    monkeypatch.setattr(endpoints, "load_pair", load)
    install(ca.issue(401), cert, key)
    slow = served.reload("operator")
    await deferToThread(read.wait, TIMEOUT)
    install(ca.issue(402), cert, key)
    fast = served.reload("SIGHUP")
    reactor.callLater(0.2, release.set)
    await slow
    await fast
    assert calls == ["401", "402"]
    assert served.info.serial == 402


# -- the admin endpoint --


@ensureDeferred
async def test_the_admin_endpoint_answers_200_409_and_refuses_input(pair, ca, logged):
    cert, key = pair
    served = ServedCertificate.load(str(cert), str(key))
    admin = Admin()
    try:
        reply = await admin.call("POST", "/v1/tls/reload")
        assert reply.status == 409
        assert "no --tls-cert/--tls-key to reload" in reply.json["error"]
        admin.site.api.tls = served

        renewed = ca.issue(501)
        install(renewed, cert, key)
        reply = await admin.call("POST", "/v1/tls/reload")
        assert reply.status == 200, reply.received
        assert reply.json == {
            **served.info.as_json(),
            "changed": True,
        }
        assert reply.json["fingerprint"] == renewed.fingerprint

        cert.write_bytes(ca.issue(502).cert_pem)
        reply = await admin.call("POST", "/v1/tls/reload", body={})
        assert reply.status == 409
        assert "the key does not match the certificate" in reply.json["error"]
        assert served.info.serial == 501

        reply = await admin.call("POST", "/v1/tls/reload", body={"force": True})
        assert reply.status == 400
        reply = await admin.call("GET", "/v1/tls/reload")
        assert reply.status == 405
        reply = await admin.call("POST", "/v1/tls/reload", token=None)
        assert reply.status == 401
        assert served.info.serial == 501
        assert lines(logged, "audit: alice tls-reload refused")
    finally:
        await admin.stop()


# -- tap's wiring --


def test_tap_reloads_the_pair_on_sighup_even_without_an_admin_api(tmp_path, pair):
    cert, key = pair
    config = options(tmp_path / "data.json", f"--tls-cert={cert}", f"--tls-key={key}")
    service = tap.makeService(config, reactor)
    reload = service.getServiceNamed("reload")
    served = [r.__self__ for r in reload.reloads if hasattr(r, "__self__")]
    assert len(served) == 1 and isinstance(served[0], ServedCertificate)
    listener = service.getServiceNamed("listener")
    assert listener.endpoint._sslContextFactory is served[0]


def test_tap_refuses_a_bad_pair_at_start_up(tmp_path, pair):
    cert, key = pair
    key.write_bytes(key_pem(new_key()))
    config = options(tmp_path / "data.json", f"--tls-cert={cert}", f"--tls-key={key}")
    with pytest.raises(SystemExit, match="the key does not match"):
        tap.makeService(config, reactor)
