"""deploy/ run for real: the systemd unit verified by systemd-analyze and its
command run as systemd would run it; chatbox behind the real nginx with the
shipped site file (TLS at the proxy, forged X-Forwarded-For, idle sockets);
every metric the dashboard and the alert rules query found in real scrapes
of one process and of a cluster node; twistd's log rotation losing no line.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
import trustme
from prometheus_client.parser import text_string_to_metric_families
from pytest_twisted import ensureDeferred
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, readBody

from chatbox.admin.tokens import append_line, hash_line
from tests import process
from tests.client import connect, until, user_at
from tests.http import fetch
from tests.redis_server import RedisServer, free_port
from tests.server import start_server
from tests.test_admin import TOKEN, Operator
from tests.test_faults import fill, tiny_disk  # noqa: F401 (a fixture, by name)
from tests.unit.test_deploy_files import (
    ALERTS,
    DASHBOARD,
    DEPLOY,
    UNIT,
    exec_start,
    json_yaml,
    seconds,
    unit_settings,
)

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
)
SITE = DEPLOY / "nginx" / "chatbox.conf"
CADDY = shutil.which("caddy")
CADDYFILE = DEPLOY / "Caddyfile"


def tls_files(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return ca, cert, key


def client_tls(ca: trustme.CA) -> object:
    root = ssl.Certificate.loadPEM(ca.cert_pem.bytes())
    return ssl.optionsForClientTLS("localhost", trustRoot=root)


# -- systemd -----------------------------------------------------------------


def test_systemd_analyze_verifies_the_unit(tmp_path):
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit as installed, but running this test's twistd.
    text = UNIT.read_text().replace("/opt/chatbox/bin/twistd", process.TWISTD, 1)
    assert process.TWISTD in text
    unit = tmp_path / "chatbox.service"
    unit.write_text(text)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True
    )
    # An unknown key or a value it cannot parse is only a warning: no output
    # at all is the pass.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    security = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
    )
    score = re.search(r"Overall exposure level for \S+: (.*)", security.stdout)
    print("systemd-analyze security:", score.group(1) if score else security.stderr)


class _Child(ProcessProtocol):
    """nginx as a child, its output kept for failure messages."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred = Deferred()
        self.exit_code: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.exit_code = reason.value.exitCode
        self.ended.callback(self.exit_code)


async def start_as_the_unit(tmp_path: Path) -> process.ServerProcess:
    """ExecStart as written, its port and --data moved into the test."""
    argv = exec_start(UNIT.read_text())
    argv[0] = process.TWISTD
    argv[argv.index("--port") + 1] = "tcp:0:interface=127.0.0.1"
    argv[argv.index("--data") + 1] = str(tmp_path / "data.json")
    child = process.ServerProcess()
    reactor.spawnProcess(
        child, argv[0], argv, env=process.child_env(), path=str(tmp_path)
    )
    await child.started.addTimeout(process.START_TIMEOUT, reactor)
    return child


@ensureDeferred
async def test_the_units_command_stops_gracefully_on_its_kill_signal(tmp_path):
    settings = unit_settings(UNIT.read_text())
    child = await start_as_the_unit(tmp_path)
    alice = await user_at(child.url, "alice")
    assert (await alice.say("kept"))["status"] is True
    (kill_signal,) = settings["KillSignal"]
    started = time.monotonic()
    os.kill(child.transport.pid, getattr(signal, kill_signal))
    code, _ = await alice.wait_closed(timeout=30)
    assert code == 1001
    await child.ended.addTimeout(seconds(settings["TimeoutStopSec"][0]), reactor)
    took = time.monotonic() - started
    assert child.stopped_cleanly, child.output.decode(errors="replace")
    print(f"stopped in {took:.2f} s of TimeoutStopSec={settings['TimeoutStopSec'][0]}")
    saved = json.loads((tmp_path / "data.json").read_text())
    assert [m["content"] for m in saved] == ["kept"]


@ensureDeferred
async def test_systemctl_reload_keeps_every_client(tmp_path):
    """With nothing to reload (no --admin-tokens, auth key or TLS), SIGHUP
    must not end chatbox: systemd counts death by SIGHUP as a clean exit,
    so Restart=on-failure would not bring it back."""
    settings = unit_settings(UNIT.read_text())
    child = await start_as_the_unit(tmp_path)
    try:
        alice = await user_at(child.url, "alice")
        (reload,) = settings["ExecReload"]
        command = shlex.split(reload.replace("$MAINPID", str(child.transport.pid)))
        assert subprocess.run(command).returncode == 0
        await deferLater(reactor, 0.5, lambda: None)
        assert not child.ended.called, child.output.decode(errors="replace")
        assert (await alice.say("after the reload"))["status"] is True
        await child.wait_for(rb"SIGHUP: nothing to reload")
    finally:
        await child.kill(signal.SIGTERM)


# -- a reverse proxy in front: nginx and Caddy --------------------------------


def require(binary: str | None, name: str, package: str) -> str:
    if binary is None:
        if os.environ.get("CHATBOX_REQUIRE_PROXIES"):
            pytest.fail(f"{name} is not installed (scripts/test installs {package})")
        pytest.skip(f"{name} is not installed (scripts/test installs {package})")
    return binary


def replace_once(text: str, old: str, new: str, where: str) -> str:
    """The shipped file, changed only where a test must: each anchor there
    exactly once, so a rewritten file fails here, not silently."""
    assert text.count(old) == 1, f"{old!r} is not in {where} exactly once"
    return text.replace(old, new)


async def until_listening(port: int, child: _Child, log: Any) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            await fetch(SimpleNamespace(port=port), "/")
            return
        except Exception:  # refused: not listening yet
            if time.monotonic() > deadline or child.ended.called:
                raise AssertionError(f"the proxy did not start: {log()}") from None
            await deferLater(reactor, 0.05, lambda: None)


class Nginx:
    """The shipped site file in a test-made nginx.conf, one process, ports
    and certificate of the test's."""

    name = "nginx"
    read_timeout = 3  # scaled down with chatbox's 1 s pings

    def __init__(self, tmp_path: Path, upstream: int, cert: Path, key: Path) -> None:
        self.binary = require(NGINX, "nginx", "nginx-light")
        self.prefix = tmp_path / "nginx"
        self.prefix.mkdir()
        self.http_port, self.https_port = free_port(), free_port()
        site = SITE.read_text()
        for old, new in (
            ("server 127.0.0.1:9000;", f"server 127.0.0.1:{upstream};"),
            ("listen 80;", f"listen 127.0.0.1:{self.http_port};"),
            ("listen [::]:80;", ""),
            ("listen 443 ssl;", f"listen 127.0.0.1:{self.https_port} ssl;"),
            ("listen [::]:443 ssl;", ""),
            ("/etc/letsencrypt/live/chat.example.org/fullchain.pem", str(cert)),
            ("/etc/letsencrypt/live/chat.example.org/privkey.pem", str(key)),
            ("/var/www/letsencrypt", str(self.prefix)),
            # A test need not sit through the real limits.
            ("proxy_read_timeout 3600s;", f"proxy_read_timeout {self.read_timeout}s;"),
            ("proxy_send_timeout 3600s;", f"proxy_send_timeout {self.read_timeout}s;"),
        ):
            site = replace_once(site, old, new, SITE.name)
        (self.prefix / "site.conf").write_text(site)
        temp = "\n".join(
            f"  {kind}_temp_path {self.prefix}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (self.prefix / "nginx.conf").write_text(
            f"""daemon off;
master_process off;
pid {self.prefix}/nginx.pid;
error_log {self.prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log off;
{temp}
  include {self.prefix}/site.conf;
}}
"""
        )
        self.args = [
            self.binary,
            "-p",
            str(self.prefix),
            "-e",
            str(self.prefix / "error.log"),
            "-c",
            str(self.prefix / "nginx.conf"),
        ]
        self.child = _Child()

    async def start(self) -> None:
        check = subprocess.run([*self.args, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        reactor.spawnProcess(self.child, self.binary, self.args, env={})
        await until_listening(self.http_port, self.child, self.log)

    def log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text() if path.exists() else self.child.output.decode()

    async def stop(self) -> None:
        if not self.child.ended.called:
            self.child.transport.signalProcess("TERM")
            await self.child.ended.addTimeout(10, reactor)


class Caddy(Nginx):
    """The shipped Caddyfile, its site address and certificate the test's
    (no ACME), its admin endpoint off."""

    name = "caddy"

    def __init__(self, tmp_path: Path, upstream: int, cert: Path, key: Path) -> None:
        self.binary = require(CADDY, "caddy", "caddy")
        self.prefix = tmp_path / "caddy"
        self.prefix.mkdir()
        self.http_port, self.https_port = free_port(), free_port()
        site = CADDYFILE.read_text()
        for old, new in (
            (
                "chat.example.org {",
                f"{{\n\tadmin off\n\tauto_https disable_redirects\n"
                f"\thttp_port {self.http_port}\n}}\n"
                f"http://127.0.0.1:{self.http_port} {{\n\trespond 404\n}}\n"
                f"https://localhost:{self.https_port}, "
                f"https://127.0.0.1:{self.https_port} {{\n"
                f"\ttls {cert} {key}",
            ),
            ("reverse_proxy 127.0.0.1:9000", f"reverse_proxy 127.0.0.1:{upstream}"),
        ):
            site = replace_once(site, old, new, CADDYFILE.name)
        (self.prefix / "Caddyfile").write_text(site)
        self.args = [
            self.binary,
            "run",
            "--adapter",
            "caddyfile",
            "--config",
            str(self.prefix / "Caddyfile"),
        ]
        self.env = {
            "HOME": str(self.prefix),
            "XDG_DATA_HOME": str(self.prefix / "data"),
            "XDG_CONFIG_HOME": str(self.prefix / "config"),
        }
        self.child = _Child()

    async def start(self) -> None:
        reactor.spawnProcess(self.child, self.binary, self.args, env=self.env)
        await until_listening(self.http_port, self.child, self.log)

    def log(self) -> str:
        return self.child.output.decode(errors="replace")


@pytest_twisted.async_yield_fixture(params=[Nginx, Caddy], ids=["nginx", "caddy"])
async def proxied(request, tmp_path):
    """chatbox as the unit runs it behind a proxy (--trusted-proxies 1),
    with WebSocket pings every second and its admin API; the proxy with the
    shipped file and a certificate the clients trust."""
    ca, cert, key = tls_files(tmp_path)
    tokens = tmp_path / "admin-tokens"
    append_line(str(tokens), hash_line("alice", TOKEN))
    server = await start_server(
        tmp_path / "data.json",
        "--trusted-proxies=1",
        "--ws-ping-interval=1",
        "--ws-ping-timeout=5",
        # Idle keep-alive connections are cut after this (5 s by default):
        # short here, so a test can outwait it.
        "--handshake-timeout=1",
    )
    proxy = operator = None
    try:
        proxy = request.param(tmp_path, server.port, cert, key)
        operator = Operator(server, tokens)
        await proxy.start()
        yield SimpleNamespace(
            server=server,
            operator=operator,
            proxy=proxy,
            ca=ca,
            url=f"wss://127.0.0.1:{proxy.https_port}",
        )
    finally:
        if proxy is not None:
            await proxy.stop()
        if operator is not None:
            await operator.stop()
        await server.stop()


@ensureDeferred
async def test_a_v2_session_through_the_proxy_with_tls_there(proxied):
    tls = client_tls(proxied.ca)
    an = await connect(proxied.url, tls=tls)
    assert (await an.register("an"))["status"] is True
    bo = await connect(proxied.url, tls=tls)
    assert (await bo.register("bo"))["status"] is True
    await an.event()  # bo joined
    assert (await an.say("hello through the proxy"))["status"] is True
    event = await bo.event()
    assert (event["datatype"], event["content"]) == (
        "message",
        "hello through the proxy",
    )
    history = (await bo.get())["data"]
    assert [m["content"] for m in history["message"]] == ["hello through the proxy"]
    assert history["online"] == ["an", "bo"]
    # The page and /healthz over TLS, through the proxy.
    agent = Agent(
        reactor,
        BrowserLikePolicyForHTTPS(
            trustRoot=ssl.Certificate.loadPEM(proxied.ca.cert_pem.bytes())
        ),
    )
    for path in (b"/", b"/healthz"):
        response = await agent.request(
            b"GET", b"https://localhost:%d%s" % (proxied.proxy.https_port, path)
        )
        await readBody(response)
        assert response.code == 200, path
    # The proxy's idle connections to chatbox outlived chatbox's
    # --handshake-timeout, which closes them: the next requests still work.
    await deferLater(reactor, 1.3, lambda: None)
    response = await agent.request(
        b"GET", b"https://localhost:%d/healthz" % proxied.proxy.https_port
    )
    await readBody(response)
    assert response.code == 200
    # /metrics is for Prometheus on chatbox's own port, not for the world,
    # under any spelling of the path (the attacker review found /metrics/).
    for path in (b"/metrics", b"/metrics/", b"/metrics/x", b"/metrics?x=1"):
        response = await agent.request(
            b"GET", b"https://localhost:%d%s" % (proxied.proxy.https_port, path)
        )
        body = await readBody(response)
        assert response.code == 404, path
        assert b"chatbox_" not in body, path
        # Refused by the proxy itself, not passed on to chatbox's own 404.
        assert body != b"not found\n", path
    assert (await fetch(proxied.server, "/metrics"))[0] == 200
    if proxied.proxy.name == "nginx":
        # Plain HTTP only redirects, except for certbot's challenges.
        code, headers, _ = await fetch(
            SimpleNamespace(port=proxied.proxy.http_port), "/"
        )
        assert code == 301
        assert headers["location"] == "https://127.0.0.1/"  # $host: no port


async def users(operator: Operator) -> dict[str, str]:
    listed = await operator.json("users")
    return {user["name"]: user["address"] for user in listed["users"]}


@ensureDeferred
async def test_a_forged_x_forwarded_for_neither_dodges_nor_frames_a_ban(proxied):
    tls = client_tls(proxied.ca)
    await proxied.operator.ok("ban", "address", "127.0.0.3", "--reason", "spam")
    # The banned address, claiming to be someone else: still refused.
    for forged in ("10.1.2.3", "10.1.2.3, 127.0.0.2", "127.0.0.2"):
        with pytest.raises(ConnectionError):
            await connect(
                proxied.url,
                tls=tls,
                source="127.0.0.3",
                headers={"X-Forwarded-For": forged},
            )
    # Someone else, claiming to be the banned address: let in, and seen as
    # what they are.
    innocent = await connect(
        proxied.url,
        tls=tls,
        source="127.0.0.2",
        headers={"X-Forwarded-For": "127.0.0.3"},
    )
    assert (await innocent.register("innocent"))["status"] is True
    plain = await connect(proxied.url, tls=tls, source="127.0.0.4")
    assert (await plain.register("plain"))["status"] is True
    assert await users(proxied.operator) == {
        "innocent": "127.0.0.2",
        "plain": "127.0.0.4",
    }


# Caddy's reverse_proxy has no read timeout on WebSockets to outlive.
@pytest.mark.parametrize("proxied", [Nginx], ids=["nginx"], indirect=True)
@ensureDeferred
async def test_an_idle_socket_outlives_the_proxys_read_timeout(proxied):
    """nginx drops a proxied connection after proxy_read_timeout without a
    byte from chatbox (3 s here, scaled with 1 s pings); chatbox's
    WebSocket pings are those bytes."""
    tls = client_tls(proxied.ca)
    idle = await connect(proxied.url, tls=tls)
    assert (await idle.register("idle"))["status"] is True
    await deferLater(reactor, proxied.proxy.read_timeout + 2, lambda: None)
    assert not idle.closed.called
    assert (await idle.say("still here"))["status"] is True
    # The shipped limits are far above chatbox's default pings.
    site = SITE.read_text()
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        value = re.search(rf"{directive} (\d+)s;", site).group(1)
        assert int(value) > 10 + 10  # --ws-ping-interval + --ws-ping-timeout


# -- metrics: what the dashboard and the alerts query exists ----------------------

PROMETHEUS_OWN = {"up"}
# Series other helpers of issue 16 add: allowed missing only while they are
# missing (the test fails once one appears, to be taken off this list).
PENDING: set[str] = set()
METRIC = re.compile(r"\b(chatbox_[a-z0-9_]+|process_[a-z0-9_]+|up)\b(?:\{([^}]*)\})?")
BY = re.compile(r"\b(?:by|without|on)\s*\(([^)]*)\)")


def queries() -> list[str]:
    """Every PromQL expression in deploy/: the alert rules' and the dashboard's
    (its panels and its template variable)."""
    exprs = [rule["expr"] for rule in json_yaml(ALERTS)["groups"][0]["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        exprs += [target["expr"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        exprs.append(variable["query"]["query"])
    return exprs


def samples(scrape: str) -> dict[str, set[str]]:
    """Sample names as Prometheus stores them (chatbox_requests_total,
    chatbox_persistence_write_seconds_bucket) with their label names."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def check_queries(found: dict[str, set[str]]) -> list[str]:
    """What is wrong with deploy/'s queries against these samples."""
    problems = []
    for expr in queries():
        labels_here = {"job", "instance"}
        for name, selector in METRIC.findall(expr):
            if name in PROMETHEUS_OWN:
                continue
            if name in PENDING:
                if name in found:
                    problems.append(f"{name} exists now: take it off PENDING")
                continue
            if name not in found:
                problems.append(f"{name} (in {expr!r}) is in no scrape")
                continue
            labels_here |= found[name]
            for matcher in filter(None, selector.split(",")):
                label = re.match(r"\s*(\w+)", matcher).group(1)
                if label not in found[name] | {"job", "instance"}:
                    problems.append(f"{name} has no label {label} (in {expr!r})")
        for grouping in BY.findall(expr):
            for label in filter(None, (x.strip() for x in grouping.split(","))):
                if label not in labels_here:
                    problems.append(f"no metric of {expr!r} has label {label}")
    return problems


async def traffic(url: str, tls: object = None) -> None:
    """Enough for every labelled series to have a sample: requests ok and
    refused, a moderation refusal is made by the caller."""
    an = await connect(url, tls=tls)
    assert (await an.register("an"))["status"] is True
    bo = await connect(url, tls=tls)
    assert (await bo.register("bo"))["status"] is True
    for n in range(20):
        assert (await an.say(f"message {n}"))["status"] is True
    await bo.get()
    await bo.request({"type": "nonsense"})
    an.sendClose()
    bo.sendClose()


@ensureDeferred
async def test_every_metric_queried_exists_in_real_scrapes(tmp_path):
    """One process (with TLS, as an operator without a proxy runs it) and a
    cluster node on a real redis-server, after traffic and a moderation
    action; every name and label deploy/ queries must be in their /metrics."""
    redis = RedisServer(tmp_path)
    await redis.start()
    ca, cert, key = tls_files(tmp_path)
    tokens = tmp_path / "admin-tokens"
    append_line(str(tokens), hash_line("alice", TOKEN))
    one = await start_server(
        tmp_path / "data.json",
        f"--tls-cert={cert}",
        f"--tls-key={key}",
        scheme="wss",
    )
    (tmp_path / "node").mkdir()
    node = await start_server(tmp_path / "node" / "data.json", f"--redis={redis.url}")
    await until(lambda: node.factory.room.ready)
    operator = Operator(one, tokens)
    try:
        tls = client_tls(ca)
        await traffic(one.url, tls)
        await operator.ok("ban", "name", "spammer", "--reason", "spam")
        refused = await connect(one.url, tls=tls)
        assert (await refused.register("spammer"))["status"] is False
        await traffic(node.url)
        agent = Agent(
            reactor,
            BrowserLikePolicyForHTTPS(
                trustRoot=ssl.Certificate.loadPEM(ca.cert_pem.bytes())
            ),
        )
        response = await agent.request(
            b"GET", b"https://localhost:%d/metrics" % one.port
        )
        one_scrape = (await readBody(response)).decode()
        _, _, body = await fetch(node, "/metrics")
        node_scrape = body.decode()
    finally:
        await operator.stop()
        await one.stop()
        await node.stop()
        await redis.kill()
    one_found, node_found = samples(one_scrape), samples(node_scrape)
    assert "chatbox_redis_up" in node_found and "chatbox_redis_up" not in one_found
    assert re.search(r"^chatbox_healthy 1\.0$", one_scrape, re.M)
    assert re.search(r"^chatbox_redis_up 1\.0$", node_scrape, re.M)
    found = dict(one_found)
    for name, labels in node_found.items():
        found[name] = found.get(name, set()) | labels
    assert check_queries(found) == []
    used = {n for e in queries() for n, _ in METRIC.findall(e)}
    print(f"{len(queries())} queries, {len(used)} series, all in the scrapes")


def test_a_renamed_metric_is_caught():
    """The check above on a scrape where one series has another name."""
    scrape = "\n".join(
        [
            "# TYPE chatbox_slow_consumer_cutoffs counter",
            "chatbox_slow_consumer_cutoffs_total 0.0",
        ]
    )
    problems = check_queries(samples(scrape))
    assert any("chatbox_slow_consumer_disconnects_total" in p for p in problems)


# -- log rotation ------------------------------------------------------------------

WRITER = """
import threading
from twisted.application import service
from twisted.internet import reactor, task
from twisted.logger import Logger

log = Logger(namespace="chatbox.test")
TOTAL = {total}


class Writer(service.Service):
    def startService(self):
        # Half the lines from the reactor thread, half from another thread,
        # as chatbox logs from both (the store's writes run on threads).
        self.count = 0
        self.thread = threading.Thread(target=self.from_thread, daemon=True)
        self.thread.start()
        self.loop = task.LoopingCall(self.from_reactor)
        self.loop.start(0.001)

    def from_reactor(self):
        for _ in range(200):
            if self.count >= TOTAL:
                self.loop.stop()
                print("reactor lines written", flush=True)
                log.info("reactor lines written")
                return
            log.info("line r{{n}} " + "x" * 40, n=self.count)
            self.count += 1

    def from_thread(self):
        for n in range(TOTAL):
            log.info("line t{{n}} " + "y" * 40, n=n)
        log.info("thread lines written")


application = service.Application("writer")
Writer().setServiceParent(application)
"""


class _Writer(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred = Deferred()

    def processEnded(self, reason) -> None:
        self.ended.callback(None)


@ensureDeferred
async def test_twistd_log_rotation_loses_and_repeats_no_line(tmp_path):
    """twistd --logfile, as README "Log files and rotation" recommends off
    systemd: it rotates by itself at 1 MB (rename, then a new file) and on
    SIGUSR1; lines written from two threads while both happen must each be
    in exactly one file, once."""
    total = 15_000
    (tmp_path / "writer.tac").write_text(WRITER.format(total=total))
    logfile = tmp_path / "chatbox.log"
    writer = _Writer()
    reactor.spawnProcess(
        writer,
        process.TWISTD,
        [
            process.TWISTD,
            "--nodaemon",
            "--pidfile=",
            f"--logfile={logfile}",
            "-y",
            str(tmp_path / "writer.tac"),
        ],
        env=process.child_env(),
        path=str(tmp_path),
    )
    signals = 0

    def finished() -> bool:
        text = b"".join(p.read_bytes() for p in tmp_path.glob("chatbox.log*"))
        return b"reactor lines written" in text and b"thread lines written" in text

    deadline = time.monotonic() + 30
    # SIGUSR1's default action ends a process: not before twistd handles it,
    # which it does before it starts the application.
    while not (logfile.exists() and b"line " in logfile.read_bytes()):
        assert time.monotonic() < deadline, "the writer did not start"
        await deferLater(reactor, 0.02, lambda: None)
    # First by size (1 MB), then by signal, every 50 ms while lines pour in.
    while not (tmp_path / "chatbox.log.1").exists():
        assert time.monotonic() < deadline, "twistd did not rotate at 1 MB"
        await deferLater(reactor, 0.02, lambda: None)
    while not await deferToThread(finished):
        assert time.monotonic() < deadline, "the writer did not finish"
        writer.transport.signalProcess(signal.SIGUSR1)
        signals += 1
        await deferLater(reactor, 0.05, lambda: None)
    writer.transport.signalProcess("TERM")
    await writer.ended.addTimeout(10, reactor)

    files = sorted(tmp_path.glob("chatbox.log*"))
    seen: dict[str, int] = {}
    for path in files:
        for line in path.read_text().splitlines():
            match = re.search(r"\bline ([rt]\d+) ", line)
            if match:
                seen[match.group(1)] = seen.get(match.group(1), 0) + 1
    missing = [f"{k}{n}" for k in "rt" for n in range(total) if f"{k}{n}" not in seen]
    repeated = {key: count for key, count in seen.items() if count != 1}
    assert (missing[:5], len(missing), repeated) == ([], 0, {})
    size = sum(path.stat().st_size for path in files)
    print(
        f"{2 * total} lines, {size / 1e6:.1f} MB in {len(files)} files, "
        f"{signals} SIGUSR1 sent"
    )
    assert signals >= 3 and len(files) > signals
    # One file was cut by size, the others by signal.
    assert max(path.stat().st_size for path in files) >= 1_000_000


TICKER = """
from twisted.application import internet, service
from twisted.logger import Logger

log = Logger(namespace="chatbox.test")
application = service.Application("ticker")
internet.TimerService(0.01, lambda: log.info("tick")).setServiceParent(application)
"""


@ensureDeferred
async def test_logrotate_renaming_leaves_twistd_writing_the_renamed_file(tmp_path):
    """Why README "Log files and rotation" says not to use logrotate: after
    its rename, SIGUSR1 (as a postrotate would send) rotates nothing, and
    twistd goes on writing into the renamed file."""
    (tmp_path / "ticker.tac").write_text(TICKER)
    logfile = tmp_path / "chatbox.log"
    ticker = _Writer()
    reactor.spawnProcess(
        ticker,
        process.TWISTD,
        [
            process.TWISTD,
            "--nodaemon",
            "--pidfile=",
            f"--logfile={logfile}",
            "-y",
            str(tmp_path / "ticker.tac"),
        ],
        env=process.child_env(),
        path=str(tmp_path),
    )
    try:
        await until(lambda: logfile.exists() and b"tick" in logfile.read_bytes())
        renamed = tmp_path / "chatbox.log.1"
        logfile.rename(renamed)
        ticker.transport.signalProcess(signal.SIGUSR1)
        size = renamed.stat().st_size
        await until(lambda: renamed.stat().st_size > size + 1000)
        assert not logfile.exists()
    finally:
        ticker.transport.signalProcess("TERM")
        await ticker.ended.addTimeout(10, reactor)


@ensureDeferred
async def test_chatbox_under_twistd_logfile_rotates_on_sigusr1(tmp_path):
    """chatbox itself leaves SIGUSR1 to twistd: a line before the signal is
    in the rotated file, one after it in the new one, and the shutdown's
    last lines too."""
    logfile = tmp_path / "chatbox.log"
    child = _Child()  # its output goes to the file
    argv = [
        process.TWISTD,
        "--nodaemon",
        "--pidfile=",
        f"--logfile={logfile}",
        "chatbox",
        "--port=tcp:0:interface=127.0.0.1",
    ]
    reactor.spawnProcess(
        child, argv[0], argv, env=process.child_env(), path=str(tmp_path)
    )
    try:
        await until(
            lambda: (
                logfile.exists()
                and process.LISTENING.search(logfile.read_bytes()) is not None
            )
        )
        url = process.LISTENING.search(logfile.read_bytes()).group(1).decode()
        before = await user_at(url, "before")
        child.transport.signalProcess(signal.SIGUSR1)
        await until(lambda: (tmp_path / "chatbox.log.1").exists())
        after = await user_at(url, "after")
        assert (await after.say("hello"))["status"] is True
        child.transport.signalProcess("TERM")
        await child.ended.addTimeout(30, reactor)
    finally:
        if not child.ended.called:
            child.transport.signalProcess("KILL")
    rotated = (tmp_path / "chatbox.log.1").read_text()
    current = logfile.read_text()
    assert "registered as 'before'" in rotated and "'after'" not in rotated
    assert "registered as 'after'" in current and "history saved" in current
    assert child.exit_code == 0
    before.transport.abortConnection()


def gauge(scrape: str, name: str) -> float | None:
    match = re.search(rf"^{name} (\S+)$", scrape, re.M)
    return float(match.group(1)) if match else None


@ensureDeferred
async def test_the_health_series_fall_when_their_parts_fail(request, tmp_path):
    """The alerts' inputs move: one process whose disk is full reports
    chatbox_healthy 0 (ChatboxPersistenceFailing) and 1 once it has room;
    a node whose Redis died reports chatbox_redis_up 0 (ChatboxRedisDown)."""
    disk = request.getfixturevalue("tiny_disk")  # tests/test_faults.py's
    one = await process.start(disk)
    redis = RedisServer(tmp_path)
    await redis.start()
    (tmp_path / "node").mkdir()
    node = await process.start(tmp_path / "node", f"--redis={redis.url}")
    await node.wait_for(rb"joined the chat cluster")
    try:
        an = await user_at(one.url, "an")
        fill(disk, leave=0)
        for i in range(200):
            if not (await an.say(f"while full {i} " + "x" * 3900))["status"]:
                break
        else:
            raise AssertionError("the disk never filled up")
        scrape = (await fetch(one, "/metrics"))[2].decode()
        assert gauge(scrape, "chatbox_healthy") == 0
        os.unlink(disk / "filler")
        assert (await an.say("room again"))["status"] is True
        scrape = (await fetch(one, "/metrics"))[2].decode()
        assert gauge(scrape, "chatbox_healthy") == 1

        scrape = (await fetch(node, "/metrics"))[2].decode()
        assert (
            gauge(scrape, "chatbox_redis_up"),
            gauge(scrape, "chatbox_healthy"),
        ) == (
            1,
            1,
        )
        await redis.kill()
        down: list[float | None] = []

        async def scraped_down() -> bool:
            scrape = (await fetch(node, "/metrics"))[2].decode()
            down[:] = [
                gauge(scrape, "chatbox_redis_up"),
                gauge(scrape, "chatbox_healthy"),
            ]
            return down == [0, 0]

        deadline = time.monotonic() + 10
        while not await scraped_down():
            assert time.monotonic() < deadline, down
            await deferLater(reactor, 0.1, lambda: None)
    finally:
        await one.kill(signal.SIGTERM)
        await node.kill(signal.SIGTERM)
        await redis.kill()
