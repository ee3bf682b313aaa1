"""The operator API end to end: the real chatbox service with its real
Moderator, the admin site (chatbox/admin/api.py) on a real loopback port,
and `chatbox-admin` run as a child process, as an operator types it.

Until tap.py starts the admin listener itself (--admin-port,
--admin-tokens), each test listens with make_admin_site on the running
service's Moderator, exactly what tap wires."""

import json
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from chatbox.admin.api import make_admin_site
from chatbox.admin.tokens import Tokens, append_line, hash_line
from tests import process
from tests.client import connect
from tests.http import fetch, metric
from tests.server import start_server

TOKEN = "an-operator-token-0123456789abcdefghijklmnopq"
CHATBOX_ADMIN = str(Path(sysconfig.get_path("scripts")) / "chatbox-admin")
COMMANDS = [
    "users",
    "kick",
    "ban",
    "bans",
    "unban",
    "mute",
    "mutes",
    "unmute",
    "delete",
    "delete-by",
    "slow-mode",
    "announce",
    "reserve",
    "unreserve",
    "reserved",
    "new-token",
]


class Operator:
    """A running chatbox with its admin listener, and the CLI to drive it."""

    def __init__(self, server: Any, tokens_file: Path) -> None:
        self.server = server
        self.tokens_file = tokens_file
        chat = server.service.getServiceNamed("chat")
        self.tokens = Tokens.load(str(tokens_file))
        self.site = make_admin_site(
            chat.moderator, self.tokens, reactor, server.factory.metrics
        )
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"

    def env(self, token: str | None = TOKEN) -> dict[str, str]:
        env = process.child_env()
        env["CHATBOX_ADMIN_URL"] = self.url
        env.pop("CHATBOX_ADMIN_TOKEN", None)
        if token is not None:
            env["CHATBOX_ADMIN_TOKEN"] = token
        return env

    async def cli(
        self,
        *args: str,
        token: str | None = TOKEN,
        script: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run chatbox-admin as a child process (on a thread: the server
        it talks to runs in this reactor)."""
        command = (
            [CHATBOX_ADMIN] if script else [sys.executable, "-m", "chatbox.admin.cli"]
        )
        result = await deferToThread(
            subprocess.run,
            [*command, *args],
            capture_output=True,
            text=True,
            env={**self.env(token), **(env or {})},
            timeout=60,
            cwd=process.REPOSITORY,
        )
        assert TOKEN not in result.stdout + result.stderr  # never printed
        return result

    async def ok(self, *args: str) -> list[str]:
        result = await self.cli(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    async def json(self, *args: str) -> Any:
        result = await self.cli("--json", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    async def server_metrics(self) -> str:
        _, _, body = await fetch(self.server, "/metrics")
        return body.decode()

    async def stop(self) -> None:
        for channel in list(self.site.channels):
            channel.transport.abortConnection()
        await self.port.stopListening()


@pytest_twisted.async_yield_fixture
async def operator(tmp_path):
    tokens_file = tmp_path / "admin-tokens"
    append_line(str(tokens_file), hash_line("alice", TOKEN))
    server = await start_server(tmp_path / "data.json")
    running = Operator(server, tokens_file)
    yield running
    await running.stop()
    await server.stop()


# -- the command line itself --


@ensureDeferred
async def test_help_for_every_command(operator):
    top = await operator.cli("--help", token=None)
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
        result = await operator.cli(command, "--help", token=None)
        assert result.returncode == 0, command
        assert result.stdout.startswith(f"usage: chatbox-admin {command}"), command


@ensureDeferred
async def test_the_console_script_is_installed(operator):
    result = await operator.cli("bans", script=True)
    assert result.returncode == 0, result.stderr


@ensureDeferred
async def test_usage_errors_exit_2(operator):
    for args in (
        [],
        ["ban", "name", "X"],
        ["mute", "name", "X", "--reason", "r"],
        ["kick", "X", "--reason", "r", "--bogus"],
    ):
        result = await operator.cli(*args)
        assert result.returncode == 2, args
        assert result.stdout == ""
    result = await operator.cli("bans", token=None)
    assert result.returncode == 2
    assert "CHATBOX_ADMIN_TOKEN" in result.stderr


@ensureDeferred
async def test_a_server_not_there_exits_3(operator):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    result = await operator.cli("--url", f"http://127.0.0.1:{closed}", "bans")
    assert result.returncode == 3
    assert "cannot reach" in result.stderr


@ensureDeferred
async def test_a_wrong_token_exits_1_and_is_not_echoed(operator):
    wrong = "wrong-token-" + "x" * 30
    result = await operator.cli("bans", token=wrong)
    assert result.returncode == 1
    assert "refused (401)" in result.stderr
    assert wrong not in result.stderr + result.stdout
    text = await operator.server_metrics()
    assert metric(text, "chatbox_admin_requests_total", outcome="unauthorized") == 1


class Thief(Resource):
    """Records every Authorization header sent to it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bytes] = []

    def render(self, request: Any) -> bytes:
        self.seen.append(request.getHeader(b"authorization") or b"")
        return b"{}"


class Redirect(Resource):
    isLeaf = True

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def render(self, request: Any) -> bytes:
        request.setResponseCode(307)
        request.setHeader(b"location", self.where.encode() + request.uri)
        return b""


@ensureDeferred
async def test_the_token_goes_to_no_redirect_and_no_proxy(operator):
    thief = Thief()
    thief_port = reactor.listenTCP(0, Site(thief), interface="127.0.0.1")
    thief_url = f"http://127.0.0.1:{thief_port.getHost().port}"
    redirect_port = reactor.listenTCP(
        0, Site(Redirect(thief_url)), interface="127.0.0.1"
    )
    try:
        redirect_url = f"http://127.0.0.1:{redirect_port.getHost().port}"
        result = await operator.cli("--url", redirect_url, "bans")
        assert result.returncode == 1
        assert "refused (307)" in result.stderr
        proxies = {"http_proxy": thief_url, "HTTP_PROXY": thief_url, "no_proxy": ""}
        result = await operator.cli("bans", env=proxies)
        assert result.returncode == 0, result.stderr
        assert thief.seen == []
    finally:
        await thief_port.stopListening()
        await redirect_port.stopListening()


@ensureDeferred
async def test_pointed_at_the_chat_port_it_says_so(operator):
    chat = f"http://127.0.0.1:{operator.server.port}"
    result = await operator.cli("--url", chat, "bans")
    assert result.returncode == 1
    assert "not the chat port" in result.stderr, result.stderr
    result = await operator.cli("--url", chat.removeprefix("http://"), "bans")
    assert result.returncode == 2
    assert "http://" in result.stderr


@ensureDeferred
async def test_the_token_file_option_reads_the_first_line(operator, tmp_path):
    token_file = tmp_path / "my-token"
    token_file.write_text(TOKEN + "\nsomething else\n")
    result = await operator.cli("--token-file", str(token_file), "bans", token="wrong")
    assert result.returncode == 0, result.stderr


@ensureDeferred
async def test_new_token_makes_one_the_server_takes_on_reload(operator):
    result = await operator.cli(
        "new-token", "bob", "--tokens-file", str(operator.tokens_file), token=None
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token not in result.stderr
    assert stat.S_IMODE(os.stat(operator.tokens_file).st_mode) == 0o600
    assert operator.tokens_file.read_text().startswith(hash_line("alice", TOKEN))
    assert (await operator.cli("bans", token=token)).returncode == 1  # not yet read
    assert await operator.tokens.reload()
    assert (await operator.cli("bans", token=token)).returncode == 0
    assert (await operator.cli("bans")).returncode == 0  # alice's still works


# -- each action, seen by real clients --


@ensureDeferred
async def test_users_plain_and_json(operator):
    spammer = await operator.server.user("Spammer")
    assert await operator.ok("users") == ["/\tSpammer\t127.0.0.1"]
    assert await operator.json("users", "--room", "/") == {
        "users": [{"room": "", "name": "Spammer", "address": "127.0.0.1"}]
    }
    result = await operator.cli("users", "--room", "no such room!")
    assert result.returncode == 1
    assert "refused (400)" in result.stderr
    spammer.abort()


@ensureDeferred
async def test_users_in_rooms_at_real_size(tmp_path):
    """300 people in two rooms, from two addresses: one line each, and
    --room takes a room as `users` prints it (/maths) or bare (maths)."""
    tokens_file = tmp_path / "admin-tokens"
    append_line(str(tokens_file), hash_line("alice", TOKEN))
    server = await start_server(tmp_path / "data.json", "--rooms=maths")
    operator = Operator(server, tokens_file)
    clients = []
    try:
        for i in range(300):
            room = "/maths" if i % 3 else ""
            client = await connect(f"{server.url}{room}", source=f"127.0.0.{1 + i % 2}")
            assert (await client.register(f"Pupil{i}"))["status"] is True
            clients.append(client)
        lines = await operator.ok("users")
        assert len(lines) == 300
        assert sorted(lines)[0].split("\t")[0] == "/"
        maths = await operator.ok("users", "--room", "/maths")
        assert len(maths) == 200 and all(line.startswith("/maths\t") for line in maths)
        assert await operator.ok("users", "--room", "maths") == maths
        default = await operator.json("users", "--room", "/")
        assert len(default["users"]) == 100
        assert {u["address"] for u in default["users"]} == {"127.0.0.1", "127.0.0.2"}
        kicked = await operator.json("kick", "Pupil1", "--room", "/", "--reason", "r")
        assert kicked == {"kicked": 0}  # Pupil1 is in /maths
    finally:
        for client in clients:
            client.abort()
        await operator.stop()
        await server.stop()


@ensureDeferred
async def test_kick_closes_the_connection_with_4001_and_the_reason(operator, caplog):
    spammer = await operator.server.user("Spammer")
    watcher = await operator.server.user("Watcher")
    kicked = await operator.ok("kick", "Spammer", "--reason", "flooding")
    assert kicked[0].startswith("kicked 1 connection(s) on this server")
    notice = await spammer.reply()
    assert notice == {
        "type": "moderation",
        "action": "kick",
        "reason": "flooding",
        "until": None,
    }
    assert await spammer.close_code_from_server() == 4001
    leave = await watcher.event()
    assert leave["datatype"] == "leave" and leave["name"] == "Spammer"
    assert await operator.json("kick", "Nobody", "--reason", "r") == {"kicked": 0}
    text = await operator.server_metrics()
    assert metric(text, "chatbox_admin_requests_total", outcome="ok") == 2
    assert metric(text, "chatbox_moderation_actions_total", action="kick") == 2
    watcher.abort()


@ensureDeferred
async def test_ban_a_name_list_it_and_lift_it(operator):
    spammer = await operator.server.user("Spammer")
    [line] = await operator.ok(
        "ban", "name", "Spammer", "--for", "1h", "--reason", "spam"
    )
    ban_id, target, room, until_, by, reason = line.split("\t")
    assert (target, room, by, reason) == ("name:Spammer", "*", "alice", "spam")
    assert until_.endswith("Z")
    assert await spammer.close_code_from_server() == 4003
    assert await operator.ok("bans") == [line]
    [ban] = (await operator.json("bans"))["bans"]
    assert ban["id"] == ban_id and ban["value"] == "Spammer"
    again = await operator.server.client()
    reply = await again.register("Spammer")
    assert reply["status"] is False and reply.get("error") == "banned"
    assert await operator.ok("unban", ban_id) == ["lifted\t" + line]
    assert await operator.ok("bans") == []
    result = await operator.cli("unban", ban_id)
    assert result.returncode == 1 and "refused (404)" in result.stderr
    reply = await again.register("Spammer")
    assert reply["status"] is True
    again.abort()


@ensureDeferred
async def test_a_ban_of_everyone_or_of_oneself_needs_force(operator):
    for address in ("0.0.0.0/0", "::/0", "127.0.0.1", "127.0.0.0/24"):
        result = await operator.cli("ban", "address", address, "--reason", "oops")
        assert result.returncode == 1, address
        assert "refused (409)" in result.stderr and "force" in result.stderr
    assert await operator.ok("bans") == []
    text = await operator.server_metrics()
    assert metric(text, "chatbox_admin_requests_total", outcome="conflict") == 4
    lines = await operator.ok(
        "ban", "address", "127.0.0.2", "--for", "90", "--force", "--reason", "test"
    )
    assert lines[0].split("\t")[1] == "address:127.0.0.2"


@ensureDeferred
async def test_mute_and_unmute(operator):
    loud = await operator.server.user("Loud")
    result = await operator.cli("mute", "name", "Loud", "--reason", "r")
    assert result.returncode == 2  # a mute needs --for
    muted = await operator.json(
        "mute", "name", "Loud", "--for", "10m", "--reason", "calm"
    )
    sanction = muted["mute"]
    notice = await loud.reply()
    assert notice["type"] == "moderation" and notice["action"] == "mute"
    assert notice["until"] == sanction["expires"]
    reply = await loud.say("hello")
    assert reply["status"] is False and reply["reason"] == "Muted"
    assert [m["id"] for m in (await operator.json("mutes"))["mutes"]] == [
        sanction["id"]
    ]
    lifted = (await operator.ok("unmute", sanction["id"]))[0]
    assert lifted.startswith("lifted\t" + sanction["id"])
    assert (await loud.reply())["action"] == "unmute"
    assert (await loud.say("hello again"))["status"] is True
    loud.abort()


@ensureDeferred
async def test_slow_mode_set_listed_and_off(operator):
    assert await operator.ok("slow-mode", "5") == ["/\t5"]
    assert await operator.ok("slow-mode") == ["/\t5"]
    assert await operator.json("slow-mode") == {"rooms": {"": 5}}
    talker = await operator.server.user("Talker")
    assert (await talker.say("one"))["status"] is True
    held = await talker.say("two")
    assert held["status"] is False and held["reason"] == "SlowMode"
    assert 0 < held["retry_after"] <= 5
    assert await operator.ok("slow-mode", "0") == ["/\t0"]
    assert await operator.json("slow-mode") == {"rooms": {}}
    talker.abort()


@ensureDeferred
async def test_reserve_list_and_free(operator):
    assert await operator.ok("reserve", "mod*") == ["mod*"]
    assert await operator.ok("reserve", "adm?n") == ["adm?n"]
    assert sorted(await operator.ok("reserved")) == ["adm?n", "mod*"]
    client = await operator.server.client()
    reply = await client.register("Moderator")
    assert reply["status"] is False and reply.get("error") == "reserved"
    assert await operator.ok("unreserve", "adm?n") == ["adm?n"]
    assert await operator.json("reserved") == {"reserved": ["mod*"]}
    result = await operator.cli("unreserve", "adm?n")
    assert result.returncode == 1 and "refused (404)" in result.stderr
    client.abort()


@ensureDeferred
async def test_announce(operator):
    reader = await operator.server.user("Reader")
    [line] = await operator.ok("announce", "Server restarts at noon")
    room, message_id = line.split("\t")
    assert room == "/"
    event = await reader.event()
    assert event["content"] == "Server restarts at noon"
    assert event.get("announcement") is True
    assert str(event["id"]) == message_id
    reader.abort()


@ensureDeferred
async def test_delete_by_id_and_by_name(operator):
    spammer = await operator.server.user("Spammer")
    ids = [(await spammer.say(f"spam {i}"))["id"] for i in range(3)]
    assert await operator.ok("delete", str(ids[0]), "--reason", "spam") == [str(ids[0])]
    lines = await operator.ok(
        "delete-by", "Spammer", "--since", "1h", "--reason", "spam"
    )
    assert lines == [str(i) for i in ids[1:]]
    history = await spammer.get()
    assert [m["id"] for m in history["data"]["message"]] == []
    spammer.abort()


@ensureDeferred
async def test_a_refused_room_exits_1(operator):
    result = await operator.cli("slow-mode", "--room", "/no/such", "5")
    assert result.returncode == 1
    assert "refused (400)" in result.stderr


@ensureDeferred
async def test_nothing_of_the_token_reaches_the_log(operator, tmp_path):
    """Every request above logs what it must; the token is in none of it."""
    from twisted.logger import formatEvent, globalLogPublisher

    seen: list[str] = []

    def observe(event: dict) -> None:
        seen.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    try:
        await operator.cli("bans", token=TOKEN + "x")
        await operator.cli("kick", "Someone", "--reason", "r")
    finally:
        globalLogPublisher.removeObserver(observe)
    text = "\n".join(seen)
    assert "refused GET /v1/bans from 127.0.0.1" in text
    assert "audit: alice kick" in text
    assert TOKEN not in text


# -- under twistd, as an operator runs it --

ADMIN_LISTENING = rb"listening on https?://127\.0\.0\.1:(\d+)"


async def twistd_with_admin(workdir: Path, *args: str) -> tuple[Any, str]:
    child = await process.start(
        workdir,
        f"--admin-tokens={workdir / 'admin-tokens'}",
        "--admin-port=tcp:0:interface=127.0.0.1",
        *args,
    )
    await child.wait_for(ADMIN_LISTENING)
    port = re.search(ADMIN_LISTENING, child.output).group(1).decode()
    return child, f"http://127.0.0.1:{port}"


async def run_cli(url: str, *args: str, token: str | None = TOKEN) -> Any:
    env = process.child_env()
    env["CHATBOX_ADMIN_URL"] = url
    env.pop("CHATBOX_ADMIN_TOKEN", None)
    if token is not None:
        env["CHATBOX_ADMIN_TOKEN"] = token
    return await deferToThread(
        subprocess.run,
        [sys.executable, "-m", "chatbox.admin.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@ensureDeferred
async def test_under_twistd_tokens_reload_on_sighup(tmp_path):
    append_line(str(tmp_path / "admin-tokens"), hash_line("alice", TOKEN))
    child, url = await twistd_with_admin(tmp_path)
    try:
        assert (await run_cli(url, "bans")).returncode == 0
        made = await run_cli(
            url, "new-token", "bob", "--tokens-file", str(tmp_path / "admin-tokens")
        )
        bob = made.stdout.strip()
        assert (await run_cli(url, "bans", token=bob)).returncode == 1
        os.kill(child.transport.pid, signal.SIGHUP)
        await child.wait_for(rb"admin tokens reloaded")
        assert (await run_cli(url, "bans", token=bob)).returncode == 0
        # A file gone bad keeps the tokens in force.
        (tmp_path / "admin-tokens").write_text("garbage\n")
        os.kill(child.transport.pid, signal.SIGHUP)
        await child.wait_for(rb"admin tokens NOT reloaded")
        assert (await run_cli(url, "bans", token=bob)).returncode == 0
    finally:
        await child.kill(signal.SIGTERM)
    assert child.stopped_cleanly, child.output.decode()
    assert TOKEN.encode() not in child.output and bob.encode() not in child.output


@ensureDeferred
async def test_under_twistd_a_bad_token_file_refuses_start_up(tmp_path):
    (tmp_path / "admin-tokens").write_text(
        hash_line("alice", TOKEN) + "\nbob plaintext-token\n"
    )
    child = process.spawn(
        tmp_path,
        f"--admin-tokens={tmp_path / 'admin-tokens'}",
        "--admin-port=tcp:0:interface=127.0.0.1",
    )
    child.started.addErrback(lambda failure: None)  # it never listens
    await child.ended.addTimeout(process.START_TIMEOUT, reactor)
    assert child.exit_code != 0
    assert b"line 2" in child.output
    assert b"plaintext-token" not in child.output


@ensureDeferred
async def test_under_twistd_tricklers_are_cut_and_operators_still_served(tmp_path):
    """A hundred connections trickle request heads into the admin port, a
    byte a second: an operator's command still works meanwhile, and every
    trickler is answered 408 and closed at the deadline."""
    append_line(str(tmp_path / "admin-tokens"), hash_line("alice", TOKEN))
    child, url = await twistd_with_admin(tmp_path)
    port = int(url.rsplit(":", 1)[1])
    try:
        started = reactor.seconds()
        tricklers = await deferToThread(_trickle, port, 100)
        assert (await run_cli(url, "bans")).returncode == 0
        statuses = await deferToThread(_read_all, tricklers)
        took = reactor.seconds() - started
        assert all(s.startswith(b"HTTP/1.1 408") or s == b"" for s in statuses)
        assert sum(s.startswith(b"HTTP/1.1 408") for s in statuses) >= 30
        print(f"100 tricklers closed within {took:.1f} s")
    finally:
        await child.kill(signal.SIGTERM)


@ensureDeferred
async def test_under_twistd_rules_survive_kill_9(tmp_path):
    """Every rule the CLI was told was made is there after kill -9: the
    rules file is written before the API answers."""
    append_line(str(tmp_path / "admin-tokens"), hash_line("alice", TOKEN))
    child, url = await twistd_with_admin(tmp_path)
    try:
        for command in (
            ("ban", "name", "Troll", "--for", "1d", "--reason", "insults"),
            ("ban", "address", "192.0.2.0/24", "--reason", "bots"),
            ("mute", "name", "Loud", "--for", "1h", "--reason", "calm"),
            ("reserve", "teacher*"),
            ("slow-mode", "7"),
        ):
            done = await run_cli(url, *command)
            assert done.returncode == 0, done.stderr
    finally:
        await child.kill(signal.SIGKILL)
    child, url = await twistd_with_admin(tmp_path)
    try:
        bans = json.loads((await run_cli(url, "--json", "bans")).stdout)["bans"]
        assert sorted(b["value"] for b in bans) == ["192.0.2.0/24", "Troll"]
        mutes = json.loads((await run_cli(url, "--json", "mutes")).stdout)["mutes"]
        assert [m["value"] for m in mutes] == ["Loud"]
        client = await connect(child.url)
        assert (await client.register("TROLL"))["error"] == "banned"
        assert (await client.register("Teacher Lan"))["error"] == "reserved"
        await client.register("alice")
        await client.say("one")
        assert (await client.say("two"))["reason"] == "SlowMode"
        client.abort()
    finally:
        await child.kill(signal.SIGTERM)


def _trickle(port: int, count: int) -> list[socket.socket]:
    opened = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(b"GET /v1/bans HTTP/1.1\r\n")
        opened.append(sock)
    return opened


def _read_all(sockets: list[socket.socket]) -> list[bytes]:
    """Trickle a header byte a second into each until the server closes it."""
    got = {s: b"" for s in sockets}
    open_ = set(sockets)
    for _ in range(60):
        if not open_:
            break
        for sock in list(open_):
            try:
                sock.sendall(b"X")
            except OSError:
                open_.discard(sock)
                continue
        deadline = time.monotonic() + 1
        while open_ and time.monotonic() < deadline:
            ready, _, _ = select.select(list(open_), [], [], 0.1)
            for sock in ready:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                got[sock] += data
                if not data:
                    open_.discard(sock)
    for sock in sockets:
        sock.close()
    return list(got.values())


@ensureDeferred
async def test_under_twistd_a_taken_admin_port_is_one_line_not_a_traceback(tmp_path):
    """Operator review: a second instance (or --admin-port equal to --port)
    ended in 40 lines of traceback."""
    append_line(str(tmp_path / "admin-tokens"), hash_line("alice", TOKEN))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        child = process.spawn(
            tmp_path,
            f"--admin-tokens={tmp_path / 'admin-tokens'}",
            f"--admin-port=tcp:{taken.getsockname()[1]}:interface=127.0.0.1",
        )
        child.started.addErrback(lambda failure: None)
        await child.ended.addTimeout(process.START_TIMEOUT, reactor)
    finally:
        taken.close()
    assert child.exit_code == 1
    assert b"cannot start: admin API cannot listen on 127.0.0.1:" in child.output
    assert b"Traceback" not in child.output
