"""Tokens for verified nicknames from the operator's side, end to end: the
real chatbox service with --auth, its real Moderator and admin site on a
loopback port, and `chatbox-admin token | verified | unverify` run as a
child process; and twistd itself, for the key options and SIGHUP.

The token must appear on the CLI's stdout and nowhere else: every log
line the server wrote during a test is searched for it."""

import json
import os
import signal
import time
from pathlib import Path

import jwt
import pytest
import pytest_twisted
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from chatbox.admin.tokens import append_line, hash_line
from tests import process
from tests.server import start_server
from tests.test_admin import TOKEN, Operator, run_cli, twistd_with_admin

SECRET = b"a-secret-for-the-auth-admin-tests-0123456789"


@pytest.fixture
def server_log():
    """Every event the in-process server logs, formatted, to search."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: "\n".join(
        (formatEvent(e) or "") + " " + repr(sorted(e.items(), key=str)) for e in events
    )
    globalLogPublisher.removeObserver(events.append)


async def operator_of(tmp_path: Path, *args: str) -> Operator:
    tokens_file = tmp_path / "admin-tokens"
    append_line(str(tokens_file), hash_line("alice", TOKEN))
    server = await start_server(
        tmp_path / "data.json", "--rooms=class-7a,class-7b", *args
    )
    return Operator(server, tokens_file)


@pytest_twisted.async_yield_fixture
async def operator(tmp_path):
    secret = tmp_path / "auth-secret"
    secret.write_bytes(SECRET + b"\n")
    running = await operator_of(tmp_path, "--auth=optional", f"--auth-secret={secret}")
    yield running
    await running.stop()
    await running.server.stop()


def payload(token: str) -> dict:
    return jwt.decode(token, SECRET, algorithms=["HS256"])


@ensureDeferred
async def test_help_for_the_token_commands(operator):
    top = await operator.cli("--help", token=None)
    for command in ("token", "verified", "unverify"):
        assert command in top.stdout
        result = await operator.cli(command, "--help", token=None)
        assert result.returncode == 0, command
        assert result.stdout.startswith(f"usage: chatbox-admin {command}")
    help_text = (await operator.cli("token", "--help", token=None)).stdout
    assert "--link BASE" in help_text and "BASE/ROOM?token=TOKEN" in help_text


@ensureDeferred
async def test_a_token_for_a_teacher_with_links(operator, server_log):
    base = f"http://127.0.0.1:{operator.server.port}"
    result = await operator.cli(
        "token",
        "Ms Lan",
        "--role",
        "moderator",
        "--room",
        "/class-7a",
        "--room",
        "class-7b",
        "--days",
        "180",
        "--link",
        base + "/",
    )
    assert result.returncode == 0, result.stderr
    token, *links = result.stdout.splitlines()
    assert links == [
        f"{base}/class-7a?token={token}",
        f"{base}/class-7b?token={token}",
    ]
    assert token not in result.stderr
    assert "'Ms Lan' (moderator) in /class-7a, /class-7b" in result.stderr
    claims = payload(token)
    assert claims["sub"] == "Ms Lan"
    assert claims["roles"] == ["moderator"]
    assert sorted(claims["rooms"]) == ["class-7a", "class-7b"]
    assert claims["exp"] - claims["iat"] == 180 * 86_400
    assert abs(claims["iat"] - time.time()) < 60
    # The server's own Verifier accepts what it minted, in those rooms only.
    verifier = operator.server.factory.verifier
    identity = verifier.verify(token, "class-7a", time.time())
    assert identity.name == "Ms Lan" and identity.moderates("class-7a", 0)
    assert identity.token_id == claims["jti"]
    with pytest.raises(Exception, match="not good in the default room"):
        verifier.verify(token, "", time.time())
    # Nowhere but stdout: not in any line the server logged.
    logged = server_log()
    assert "Ms Lan" in logged  # the audit line names who
    assert token not in logged
    assert token.split(".")[2] not in logged  # nor its signature alone
    metrics = await operator.server_metrics()
    assert token not in metrics


@ensureDeferred
async def test_a_token_for_every_room_and_its_json(operator):
    base = "https://chat.school.example"
    answer = await operator.json("token", "Bạn Minh", "--link", base)
    token = answer["token"]
    assert answer["name"] == "Bạn Minh"
    assert (answer["rooms"], answer["roles"]) == (None, [])
    assert answer["links"] == [f"{base}/?token={token}"]
    claims = payload(token)
    assert "rooms" not in claims and "roles" not in claims
    assert answer["expires"] == claims["exp"] * 1000
    assert claims["exp"] - claims["iat"] == 30 * 86_400
    plain = await operator.ok("token", "Bạn Minh")
    assert len(plain) == 1 and plain[0] != token


@ensureDeferred
async def test_verified_and_unverify(operator):
    await operator.ok("token", "Ms Lan", "--room", "class-7a")
    lines = await operator.ok("verified")
    assert [line.split("\t")[:3] for line in lines] == [
        ["Ms Lan", "/class-7a", "alice"]
    ]
    listed = await operator.json("verified")
    assert [(v["name"], v["rooms"], v["by"]) for v in listed["verified"]] == [
        ("Ms Lan", ["class-7a"], "alice")
    ]
    assert await operator.ok("unverify", "Ms Lan") == ["Ms Lan"]
    assert await operator.ok("verified") == []
    again = await operator.cli("unverify", "Ms Lan")
    assert again.returncode == 1
    assert "refused (404)" in again.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["token", "a\tb"],
        ["token", "x" * 101],
        ["token", "Ms Lan", "--room", "not a room!"],
    ],
)
@ensureDeferred
async def test_a_token_that_cannot_be_made_exits_1(operator, args):
    result = await operator.cli(*args)
    assert result.returncode == 1, result.stderr
    assert "refused (400)" in result.stderr
    assert result.stdout == ""
    assert await operator.ok("verified") == []


@pytest.mark.parametrize("auth", [[], ["--auth=optional", "--auth-public-key=KEY"]])
@ensureDeferred
async def test_without_a_secret_no_token_is_made(tmp_path, auth):
    if auth:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = tmp_path / "website.pem"
        key.write_bytes(
            ed25519.Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
        )
        auth = [auth[0], f"--auth-public-key={key}"]
    running = await operator_of(tmp_path, *auth)
    try:
        result = await running.cli("token", "Ms Lan")
        assert result.returncode == 1
        assert "refused (409)" in result.stderr
        assert "--auth-secret" in result.stderr
        assert result.stdout == ""
    finally:
        await running.stop()
        await running.server.stop()


# -- under twistd --


@ensureDeferred
async def test_under_twistd_sighup_reloads_the_secret_and_a_bad_one_is_kept_out(
    tmp_path,
):
    append_line(str(tmp_path / "admin-tokens"), hash_line("alice", TOKEN))
    secret = tmp_path / "auth-secret"
    secret.write_bytes(SECRET)
    child, url = await twistd_with_admin(
        tmp_path, "--auth=optional", f"--auth-secret={secret}"
    )
    minted = []
    try:
        await child.wait_for(rb"auth optional: tokens checked against a secret")
        first = await run_cli(url, "token", "Ms Lan")
        assert first.returncode == 0, first.stderr
        minted.append(first.stdout.strip())
        assert payload(minted[0])["sub"] == "Ms Lan"
        new_secret = b"n" * 64
        secret.write_bytes(new_secret)
        os.kill(child.transport.pid, signal.SIGHUP)
        await child.wait_for(rb"auth keys reloaded")
        await child.wait_for(rb"admin tokens reloaded")  # one SIGHUP, both
        second = await run_cli(url, "token", "Ms Lan")
        minted.append(second.stdout.strip())
        assert jwt.decode(minted[1], new_secret, algorithms=["HS256"])["sub"] == (
            "Ms Lan"
        )
        with pytest.raises(jwt.InvalidSignatureError):
            payload(minted[1])
        # A secret gone short keeps the one in force.
        secret.write_bytes(b"short\n")
        os.kill(child.transport.pid, signal.SIGHUP)
        await child.wait_for(rb"auth keys NOT reloaded")
        third = await run_cli(url, "token", "Ms Lan")
        minted.append(third.stdout.strip())
        assert jwt.decode(minted[2], new_secret, algorithms=["HS256"])
    finally:
        await child.kill(signal.SIGTERM)
    assert child.stopped_cleanly, child.output.decode()
    for token in minted:
        assert token.encode() not in child.output
    assert SECRET not in child.output and b"n" * 64 not in child.output
    assert b"short" not in child.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--auth=optional"], b"--auth optional needs a key to check tokens with"),
        (["--auth-secret=SECRET"], b"--auth-secret needs --auth optional or"),
        (
            ["--auth=required", "--auth-secret=SECRET"],
            b"--auth-secret SECRET: 20 bytes, needs at least 32",
        ),
    ],
)
@ensureDeferred
async def test_under_twistd_auth_mistakes_refuse_start_up_in_one_line(
    tmp_path, args, says
):
    secret = tmp_path / "auth-secret"
    secret.write_bytes(b"twenty-secret-bytes!")
    args = [a.replace("SECRET", str(secret)) for a in args]
    child = process.spawn(tmp_path, *args)
    child.started.addErrback(lambda failure: None)  # it never listens
    await child.ended.addTimeout(process.START_TIMEOUT, reactor)
    assert child.exit_code != 0
    assert says.replace(b"SECRET", str(secret).encode()) in child.output
    assert b"twenty-secret-bytes" not in child.output
    assert b"Traceback" not in child.output


def test_the_minted_tokens_claims_are_json_the_spec_names():
    """The claims a website must use are the ones minting writes."""
    from chatbox.auth.minting import mint

    token, _ = mint(SECRET, "Ms Lan", ["moderator"], ["class-7a"], 1, now=0)
    claims = json.loads(
        jwt.utils.base64url_decode(token.split(".")[1].encode()).decode()
    )
    assert set(claims) == {"sub", "exp", "iat", "jti", "roles", "rooms"}
