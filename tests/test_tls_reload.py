"""A certificate renewal under twistd, as certbot's deploy hook does one:
new files, then SIGHUP (or `chatbox-admin tls-reload`), with 200 wss
clients connected that must notice nothing; and every way an operator can
get the new files wrong, which must keep the old certificate served."""

import os
import re
import signal
from pathlib import Path

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from chatbox.admin.tokens import append_line, hash_line
from tests import process
from tests.certificates import CA, install, key_pem, new_key
from tests.client import connect, together
from tests.http import metric
from tests.test_admin import ADMIN_LISTENING, TOKEN, run_cli

CLIENTS = 200
GAUGE = "chatbox_tls_certificate_expiry_timestamp_seconds"
RELOADED = rb"TLS certificate reloaded \(SIGHUP\)"
REFUSED = rb"TLS certificate NOT reloaded \(SIGHUP\)[^\n]*"


@implementer(IPolicyForHTTPS)
class _TrustCA:
    def __init__(self, ca: CA) -> None:
        self.ca = ca

    def creatorForNetloc(self, hostname: bytes, port: int):
        return self.ca.client_options()


class Server:
    """The twistd child, and what a test asks of it."""

    def __init__(self, child, ca: CA, cert: Path, key: Path, admin: str) -> None:
        self.child = child
        self.ca = ca
        self.cert = cert
        self.key = key
        self.admin = admin

    @property
    def url(self) -> str:
        return self.child.url

    async def client(self):
        return await connect(self.url, tls=self.ca.client_options())

    async def served_serial(self) -> int:
        """The serial of the certificate a new client is shown."""
        client = await self.client()
        try:
            return peer_serial(client)
        finally:
            client.transport.loseConnection()

    async def gauge(self) -> float:
        agent = Agent(reactor, contextFactory=_TrustCA(self.ca))
        response = await agent.request(
            b"GET", f"https://127.0.0.1:{self.child.port}/metrics".encode()
        )
        text = (await readBody(response)).decode()
        return metric(text, GAUGE)

    async def hangup(self, outcome: bytes) -> str:
        """SIGHUP, then the next log line matching `outcome`."""
        count = len(re.findall(outcome, self.child.output)) + 1
        os.kill(self.child.transport.pid, signal.SIGHUP)
        await self.child.wait_for(outcome, count, timeout=10)
        return re.findall(outcome, self.child.output)[-1].decode()


async def heard(client, content: str) -> None:
    """Read `client`'s events up to the message `content` (the others'
    joins come first)."""
    while (event := await client.event()).get("content") != content:
        assert event.get("datatype") != "message", event


def readme_hook(folder: Path, pid: int) -> str:
    """The deploy hook as README "Certificates and renewals" prints it, with
    its folder, owner and reload command pointed at this test."""
    readme = (Path(process.REPOSITORY) / "README.md").read_text()
    section = readme.split("### Certificates and renewals", 1)[1]
    hook = re.search(r"```sh\n(#!/bin/sh\n.*?)```", section, re.DOTALL).group(1)
    for old, new in (
        ("/etc/chatbox/tls", str(folder)),
        ("-o root -g chatbox", f"-o {os.getuid()} -g {os.getgid()}"),
        ("systemctl reload chatbox", f"kill -HUP {pid}"),
    ):
        assert old in hook, old
        hook = hook.replace(old, new)
    return hook


def peer_serial(client) -> int:
    return client.transport.getPeerCertificate().to_cryptography().serial_number


@pytest.fixture
def pki(tmp_path):
    ca = CA()
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    install(ca.issue(1001), cert, key)
    append_line(str(tmp_path / "admin-tokens"), hash_line("alice", TOKEN))
    return ca, cert, key


async def start(tmp_path: Path, ca: CA, cert: Path, key: Path) -> Server:
    child = await process.start(
        tmp_path,
        f"--tls-cert={cert}",
        f"--tls-key={key}",
        "--max-connections-per-ip=0",
        f"--admin-tokens={tmp_path / 'admin-tokens'}",
        "--admin-port=tcp:0:interface=127.0.0.1",
    )
    await child.wait_for(ADMIN_LISTENING)
    port = re.search(ADMIN_LISTENING, child.output).group(1).decode()
    return Server(child, ca, cert, key, f"http://127.0.0.1:{port}")


@ensureDeferred
async def test_sighup_renews_the_certificate_and_no_client_notices(tmp_path, pki):
    ca, cert, key = pki
    server = await start(tmp_path, ca, cert, key)
    try:
        old = ca.issue(1001)  # only its dates matter below: the gauge moves
        assert await server.gauge() > 0

        async def user(n: int):
            client = await server.client()
            assert (await client.register(f"u{n}"))["status"] is True
            return client

        clients = await together(user(n) for n in range(CLIENTS))
        assert {peer_serial(c) for c in clients} == {1001}
        before = await server.gauge()

        renewed = ca.issue(2002, days=60)
        install(renewed, cert, key)
        line = await server.hangup(RELOADED + rb"[^\n]*")
        assert "serial 7D2" in line, line  # 2002 in hex, as openssl prints it

        # Nobody was dropped, and each still sends and hears on its old session.
        assert not [c for c in clients if c.closed.called]
        assert {peer_serial(c) for c in clients} == {1001}
        assert (await clients[0].say("after the renewal"))["status"] is True
        for client in clients[1:]:  # the sender has its reply instead
            await heard(client, "after the renewal")
        replies = await together(
            c.say(f"still here {i}") for i, c in enumerate(clients)
        )
        assert all(r["status"] is True for r in replies)

        # A new client is shown the new certificate, and so is /metrics.
        assert await server.served_serial() == 2002
        assert await server.gauge() == pytest.approx(renewed.not_after)
        assert await server.gauge() != before
        del old

        # The README's certbot deploy hook, run as certbot runs it, in a
        # test folder and signalling this child rather than systemd's.
        lineage = tmp_path / "live" / "chat.example.org"
        lineage.mkdir(parents=True)
        third = ca.issue(2003)
        (lineage / "fullchain.pem").write_bytes(third.cert_pem + ca.cert_pem)
        (lineage / "privkey.pem").write_bytes(third.key_pem)
        hook = readme_hook(cert.parent, server.child.transport.pid)
        count = len(re.findall(RELOADED, server.child.output)) + 1
        ran = await getProcessOutputAndValue(
            "/bin/sh", ["-c", hook], env={"RENEWED_LINEAGE": str(lineage)}
        )
        assert ran[2] == 0, ran
        await server.child.wait_for(RELOADED, count, timeout=10)
        assert await server.served_serial() == 2003
        assert not [c for c in clients if c.closed.called]
    finally:
        await server.child.kill(signal.SIGTERM)
    assert server.child.stopped_cleanly, server.child.output.decode()


def _broken_pairs(ca: CA, cert: Path, key: Path, tmp_path: Path):
    """(what the operator did, what the log line must say), each applied in
    turn to the files; none of them may be served."""
    other = ca.issue(3003)
    mine = ca.issue(3004)

    def garbage() -> None:
        cert.write_bytes(os.urandom(3000))
        key.write_bytes(mine.key_pem)

    def mismatch() -> None:
        cert.write_bytes(mine.cert_pem)
        key.write_bytes(other.key_pem)

    def missing_key() -> None:
        cert.write_bytes(mine.cert_pem)
        key.unlink()

    def only_a_key_in_the_cert_file() -> None:
        cert.write_bytes(mine.key_pem)
        key.write_bytes(mine.key_pem)

    def swapped() -> None:
        cert.write_bytes(mine.key_pem)
        key.write_bytes(mine.cert_pem)

    def chain_in_the_wrong_order() -> None:
        cert.write_bytes(other.cert_pem + mine.cert_pem)
        key.write_bytes(mine.key_pem)

    def expired() -> None:
        old = ca.issue(3005, days=30, start_days_ago=40)
        cert.write_bytes(old.cert_pem)
        key.write_bytes(old.key_pem)

    def not_yet_valid() -> None:
        early = ca.issue(3006, start_days_ago=-2)
        cert.write_bytes(early.cert_pem)
        key.write_bytes(early.key_pem)

    def damaged_certificate() -> None:
        pem = mine.cert_pem.replace(b"\n", b"\n!", 3)
        cert.write_bytes(pem)
        key.write_bytes(mine.key_pem)

    def encrypted_key() -> None:
        from cryptography.hazmat.primitives import serialization

        cert.write_bytes(mine.cert_pem)
        key.write_bytes(
            mine.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )

    def unreadable_cert() -> None:
        cert.write_bytes(mine.cert_pem)
        key.write_bytes(mine.key_pem)
        cert.chmod(0)

    return [
        (garbage, f"no PEM certificate found in {cert}"),
        (mismatch, f"key {key} cannot be used: the key does not match"),
        (missing_key, f"cannot read the TLS key {key}: No such file"),
        (only_a_key_in_the_cert_file, f"no PEM certificate found in {cert}"),
        (swapped, f"no PEM certificate found in {cert}"),
        (chain_in_the_wrong_order, "matches certificate 2 of the file"),
        (expired, f"the certificate in {cert}: it expired on"),
        (not_yet_valid, f"the certificate in {cert}: it is not valid until"),
        (damaged_certificate, f"certificate 1 in {cert} cannot be read"),
        (encrypted_key, f"the TLS key {key} is encrypted"),
        (unreadable_cert, f"cannot read the TLS certificate {cert}: Permission"),
    ]


@ensureDeferred
async def test_a_bad_new_pair_keeps_the_old_one_served_and_says_why(tmp_path, pki):
    ca, cert, key = pki
    # As the service user is: root would read a file of mode 0.
    child = await process.start(
        tmp_path,
        f"--tls-cert={cert}",
        f"--tls-key={key}",
        f"--admin-tokens={tmp_path / 'admin-tokens'}",
        "--admin-port=tcp:0:interface=127.0.0.1",
        under=process.WITHOUT_OVERRIDES,
    )
    await child.wait_for(ADMIN_LISTENING)
    admin = re.search(ADMIN_LISTENING, child.output).group(1).decode()
    server = Server(child, ca, cert, key, f"http://127.0.0.1:{admin}")
    try:
        watcher = await server.client()
        assert (await watcher.register("Watcher"))["status"] is True
        gauge = await server.gauge()
        for spoil, says in _broken_pairs(ca, cert, key, tmp_path):
            spoil()
            line = await server.hangup(REFUSED)
            assert says in line, (spoil.__name__, line)
            assert "the previous one (valid until" in line
            assert await server.served_serial() == 1001, spoil.__name__
            cert.chmod(0o644)
        assert await server.gauge() == gauge
        assert not watcher.closed.called
        assert (await watcher.say("still served"))["status"] is True
        assert b"Traceback" not in child.output
    finally:
        await child.kill(signal.SIGTERM)
    assert child.stopped_cleanly, child.output.decode()


@ensureDeferred
async def test_the_admin_action_reloads_and_reports(tmp_path, pki):
    ca, cert, key = pki
    server = await start(tmp_path, ca, cert, key)
    try:
        watcher = await server.client()
        assert (await watcher.register("Watcher"))["status"] is True

        # A key that is not the certificate's: refused, with the reason.
        cert.write_bytes(ca.issue(4004).cert_pem)
        key.write_bytes(key_pem(new_key()))
        refused = await run_cli(server.admin, "tls-reload")
        assert refused.returncode == 1, refused
        assert "refused (409)" in refused.stderr
        assert "the key does not match the certificate" in refused.stderr
        assert str(cert) in refused.stderr
        assert await server.served_serial() == 1001
        await server.child.wait_for(
            rb"TLS certificate NOT reloaded \(asked by operator alice\)"
        )

        renewed = ca.issue(5005, days=45)
        install(renewed, cert, key)
        done = await run_cli(server.admin, "--json", "tls-reload")
        assert done.returncode == 0, done
        import json

        answer = json.loads(done.stdout)
        assert answer["subject"] == "CN=localhost"
        assert answer["serial"] == "138D"
        assert answer["fingerprint"] == renewed.fingerprint
        assert answer["not_after"] == int(renewed.not_after * 1000)
        assert answer["changed"] is True
        assert await server.served_serial() == 5005
        assert await server.gauge() == pytest.approx(renewed.not_after)

        again = await run_cli(server.admin, "tls-reload")
        assert again.returncode == 0, again
        assert again.stdout.startswith("unchanged"), again.stdout
        assert renewed.fingerprint in again.stdout
        assert b"audit: alice tls-reload" in server.child.output
        assert not watcher.closed.called
        assert peer_serial(watcher) == 1001
    finally:
        await server.child.kill(signal.SIGTERM)
    assert server.child.stopped_cleanly, server.child.output.decode()
