"""Verified nicknames on the wire (issue 15), over real sockets: tokens in
the URL, in an Authorization header and in an `auth` request; --auth off,
optional and required; every refusal as the client sees it (the reason,
the 4401 close); impersonation while the verified user is away; a guest
squatting a verified nickname; the verified marker on every shape; an
attacker's floods and oversized tokens; and no token in any log line.

Tokens are made here with PyJWT as a school's website would; the server
checks them with its real verifier (--auth-secret, --auth-public-key).
tests/test_auth_moderators.py and tests/test_cluster_auth.py use the
helpers here."""

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import reactor
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from tests import process, test_classic_client
from tests.client import (
    TIMEOUT,
    ChatClientProtocol,
    raw_get,
    together,
    until,
)
from tests.rawclient import RawClient
from tests.server import RunningServer, start_server

SECRET = b"a school's secret, at least 32 bytes long, for HS256"
WRONG_SECRET = b"another school's secret, also 32 bytes or more long"
HOUR = 3600


# -- tokens, as a website makes them -------------------------------------------


def token(
    name: str,
    secret: Any = SECRET,
    algorithm: str = "HS256",
    expires_in: float = HOUR,
    headers: dict | None = None,
    **claims: Any,
) -> str:
    now = time.time()
    payload = {"sub": name, "exp": int(now + expires_in), "iat": int(now), **claims}
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


def unsigned(name: str, **claims: Any) -> str:
    """alg none: a token anyone can forge."""
    now = time.time()
    payload = {"sub": name, "exp": int(now + HOUR), **claims}
    return jwt.encode(payload, None, algorithm="none")


def rsa_key() -> tuple[Any, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public


# -- the server ----------------------------------------------------------------


async def auth_server(
    tmp_path: Path, mode: str = "optional", *args: str, public: bytes | None = None
) -> RunningServer:
    """A chatbox with --auth `mode`, trusting SECRET (and `public`, a PEM
    public key, if given)."""
    secret = tmp_path / "auth-secret"
    secret.write_bytes(SECRET + b"\n")
    keys = ["--auth-secret", str(secret)]
    if public is not None:
        (tmp_path / "auth-public.pem").write_bytes(public)
        keys += ["--auth-public-key", str(tmp_path / "auth-public.pem")]
    return await start_server(tmp_path / "data.json", "--auth", mode, *keys, *args)


@pytest_twisted.async_yield_fixture
async def optional(tmp_path: Path):
    server = await auth_server(tmp_path, "optional")
    yield server
    await server.stop()


@pytest_twisted.async_yield_fixture
async def required(tmp_path: Path):
    server = await auth_server(tmp_path, "required")
    yield server
    await server.stop()


# -- clients -------------------------------------------------------------------


async def client(
    server: Any,
    with_token: str | None = None,
    header: str | None = None,
    path: str = "",
) -> ChatClientProtocol:
    """A client of `server` (a RunningServer, or a node's URL), showing
    `with_token` in the URL and/or `header` as a Bearer token."""
    base = server if isinstance(server, str) else server.url
    url = base + path
    if with_token is not None:
        url += "?token=" + quote(with_token, safe="")
    headers = {} if header is None else {"Authorization": f"Bearer {header}"}
    factory = WebSocketClientFactory(url, headers=headers)
    factory.protocol = ChatClientProtocol
    factory.setProtocolOptions(autoPingInterval=0)
    port = int(base.rsplit(":", 1)[1])
    endpoint = HostnameEndpoint(reactor, "127.0.0.1", port)
    protocol = await endpoint.connect(factory)
    return await protocol.opened.addTimeout(TIMEOUT, reactor)


async def verified(server: Any, name: str, path: str = "", **claims: Any):
    """A client whose URL token vouches for `name`, registered as `name`."""
    user = await client(server, token(name, **claims), path=path)
    welcome = await user.reply()
    assert welcome["status"] is True, welcome
    reply = await user.register(name)
    assert reply["status"] is True, reply
    return user


async def guest(server: Any, name: str, path: str = "") -> ChatClientProtocol:
    user = await client(server, path=path)
    reply = await user.register(name)
    assert reply["status"] is True, reply
    return user


async def refused_at_open(user: ChatClientProtocol) -> tuple[dict, int, str]:
    """What a client whose handshake token was refused is told: the
    auth_refused reply, then the close code and reason."""
    reply = await user.reply()
    _, reason = await user.wait_closed()
    return reply, user.server_close_code, reason


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def expires_ms(encoded: str) -> int:
    return jwt.decode(encoded, options={"verify_signature": False})["exp"] * 1000


class Log:
    """Every log event of this process while it is open, formatted."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __enter__(self) -> "Log":
        globalLogPublisher.addObserver(self._observe)
        return self

    def __exit__(self, *_: object) -> None:
        globalLogPublisher.removeObserver(self._observe)

    def _observe(self, event: dict) -> None:
        self.lines.append(formatEvent(event) or repr(event))
        self.lines.append(repr(event))  # every field, formatted or not

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


# -- --auth off: nothing new ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_auth_off_ignores_tokens_everywhere(server):
    """The default: a token in the URL or header changes nothing, an `auth`
    request is AuthDisabled, every name is free and nothing is marked."""
    assert server.factory.auth_mode == "off"
    good = token("Teacher")
    user = await client(server, good, header=good)
    reply = await user.register("Teacher")
    assert set(reply) == {"type", "action", "name", "status", "timestamp", "time"}
    assert reply["status"] is True
    assert await user.request({"type": "auth", "token": good}) == {
        "type": "auth",
        "status": False,
        "reason": "AuthDisabled",
        "error": "this server does not use sign-in tokens",
    }
    sent = await user.say("hi")
    assert "verified" not in sent
    page = await user.get()
    assert "verified" not in page["data"]
    assert all("verified" not in entry for entry in page["data"]["message"])
    # A refused-looking token does not close anything either.
    other = await client(server, "garbage", header=unsigned("x"))
    assert (await other.register("other"))["status"] is True


@pytest_twisted.ensureDeferred
async def test_the_classic_session_is_unchanged_for_guests_under_optional(optional):
    """tests/test_classic_client.py's session (which runs under --auth off
    there) against --auth optional: a guest sees v2 exactly."""
    await test_classic_client.test_a_classic_session(optional)


# -- accepted tokens -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_url_token_is_welcomed_and_marks_everything(optional):
    watcher = await guest(optional, "watcher")
    encoded = token("Teacher", roles=["zzz", "moderator"], rooms=["class-7a", ""])
    teacher = await client(optional, encoded)
    assert await teacher.reply() == {
        "type": "auth",
        "status": True,
        "name": "Teacher",
        "roles": ["moderator"],  # unknown roles are ignored
        "rooms": ["", "class-7a"],
        "expires": expires_ms(encoded),
    }
    reply = await teacher.register("Teacher")
    assert reply["status"] is True and reply["verified"] is True
    joined = await watcher.event()
    assert joined["datatype"] == "register" and joined["verified"] is True
    sent = await teacher.say("hello class")
    assert sent["verified"] is True
    message = await watcher.event()
    assert message["content"] == "hello class" and message["verified"] is True
    page = await watcher.get()
    assert page["data"]["verified"] == ["Teacher"]
    assert page["data"]["online"] == ["watcher", "Teacher"]
    assert page["data"]["message"][-1]["verified"] is True
    # A guest's own shapes carry nothing new.
    said = await watcher.say("hi")
    assert "verified" not in said
    heard = await teacher.event()
    assert "verified" not in heard
    renamed = await teacher.register("TEACHER")
    assert renamed["status"] is True and renamed["verified"] is True
    change = await watcher.event()
    assert change["datatype"] == "change" and change["verified"] is True


@pytest_twisted.ensureDeferred
async def test_header_token_is_welcomed(optional):
    teacher = await client(optional, header=token("Teacher"))
    welcome = await teacher.reply()
    assert welcome["status"] is True and welcome["rooms"] is None
    assert welcome["roles"] == []
    assert (await teacher.register("Teacher"))["verified"] is True


@pytest_twisted.ensureDeferred
async def test_auth_request_before_name(optional):
    user = await client(optional)
    assert await user.request({"type": "auth"}) == {
        "type": "auth",
        "status": False,
        "reason": "NotEnoughKey",
        "need": "token",
    }
    for not_text in (None, 42, ["a.b.c"], {"t": 1}):
        reply = await user.request({"type": "auth", "token": not_text})
        assert reply["status"] is False and reply["reason"] == "TokenMalformed"
    refused = await user.request({"type": "auth", "token": token("x", WRONG_SECRET)})
    assert refused["reason"] == "TokenBadSignature"
    assert "error" in refused and token("x", WRONG_SECRET) not in refused["error"]
    # Still a guest: any free name, unmarked.
    encoded = token("Teacher")
    good = await user.request({"type": "auth", "token": encoded})
    assert good["status"] is True and good["name"] == "Teacher"
    reply = await user.register("Teacher")
    assert reply["verified"] is True
    after = await user.request({"type": "auth", "token": encoded})
    assert after["reason"] == "AlreadyRegistered" and after["status"] is False


@pytest_twisted.ensureDeferred
async def test_a_refused_auth_request_leaves_the_handshake_identity(optional):
    user = await client(optional, token("Teacher"))
    assert (await user.reply())["status"] is True
    refused = await user.request(
        {"type": "auth", "token": token("Other", expires_in=-HOUR)}
    )
    assert refused["reason"] == "TokenExpired"
    assert (await user.register("Teacher"))["verified"] is True


@pytest_twisted.ensureDeferred
async def test_an_auth_request_replaces_the_handshake_identity(optional):
    user = await client(optional, token("Teacher"))
    await user.reply()
    assert (await user.request({"type": "auth", "token": token("Aide")}))[
        "name"
    ] == "Aide"
    refused = await user.register("Teacher")
    assert (refused["reason"], refused.get("error")) == ("NameAlreadyUsed", "token")
    assert (await user.register("Aide"))["verified"] is True


@pytest_twisted.ensureDeferred
async def test_guest_without_token_under_optional_is_a_guest(optional):
    user = await client(optional)
    reply = await user.register("anyone")
    assert reply["status"] is True and "verified" not in reply


# -- --auth required -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_required_refuses_a_handshake_without_token_with_401(required):
    status, headers, body = await raw_get(required.port, "/", websocket=True)
    assert status == 401
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["www-authenticate"].startswith("Bearer")
    text = body.decode()
    assert "this chat needs a sign-in token: open the link you were given" in text
    assert "cuộc trò chuyện này cần mã đăng nhập" in text
    # An empty token, or another scheme, is no token.
    for path, extra in (("/?token=", {}), ("/", {"Authorization": "Basic YTpi"})):
        status, _, _ = await raw_get(required.port, path, websocket=True, **extra)
        assert status == 401, (path, extra)
    # The page itself is served: it reads ?token= from its own URL.
    status, _, _ = await raw_get(required.port, "/")
    assert status == 200
    # With a token, the chat.
    teacher = await client(required, token("Teacher"))
    assert (await teacher.reply())["status"] is True
    assert (await teacher.register("Teacher"))["verified"] is True
    viaheader = await client(required, header=token("Aide"))
    assert (await viaheader.reply())["status"] is True


@pytest_twisted.ensureDeferred
async def test_required_closes_a_refused_token_with_4401(required):
    user = await client(required, token("Teacher", expires_in=-HOUR))
    reply, code, reason = await refused_at_open(user)
    assert reply["reason"] == "TokenExpired" and code == 4401
    assert reason == "TokenExpired"


# -- refused tokens ------------------------------------------------------------


REFUSALS = {
    "expired": (lambda: token("T", expires_in=-HOUR), "TokenExpired"),
    "not yet valid (nbf)": (
        lambda: token("T", nbf=int(time.time() + HOUR)),
        "TokenNotYetValid",
    ),
    "wrong room": (lambda: token("T", rooms=["class-7b"]), "TokenWrongRoom"),
    "wrong key": (lambda: token("T", WRONG_SECRET), "TokenBadSignature"),
    "alg none": (lambda: unsigned("T"), "TokenAlgorithm"),
    "not a JWT": (lambda: "not-a-token", "TokenMalformed"),
    "no exp": (
        lambda: jwt.encode({"sub": "T"}, SECRET, algorithm="HS256"),
        "TokenMalformed",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
@pytest_twisted.ensureDeferred
async def test_a_refused_url_token_is_told_and_closed_with_4401(optional, case):
    make, reason = REFUSALS[case]
    user = await client(optional, make())
    reply, code, close_reason = await refused_at_open(user)
    assert reply["type"] == "auth" and reply["status"] is False
    assert reply["reason"] == reason and isinstance(reply["error"], str)
    assert (code, close_reason) == (4401, reason)


@pytest_twisted.ensureDeferred
async def test_a_refused_header_token_is_closed_and_nothing_it_sends_counts(optional):
    """Autobahn still parses what arrives while the close handshake runs:
    none of it is handled (a name taken then would be told to everyone)."""
    watcher = await guest(optional, "watcher")
    speaker = await guest(optional, "speaker")
    assert (await watcher.event())["name"] == "speaker"
    user = await client(optional, header=token("T", WRONG_SECRET))
    user.send_json({"type": "name", "name": "T"})
    user.send_json({"type": "send", "content": "sneaked in"})
    reply, code, _ = await refused_at_open(user)
    assert reply["reason"] == "TokenBadSignature" and code == 4401
    assert user.raw == [reply]
    await watcher.no_event_before(speaker)


@pytest_twisted.ensureDeferred
async def test_two_tokens_in_one_handshake_are_malformed(optional):
    user = await client(optional, token("A"), header=token("B"))
    reply, code, _ = await refused_at_open(user)
    assert (reply["reason"], code) == ("TokenMalformed", 4401)


@pytest_twisted.ensureDeferred
async def test_hmac_rsa_confusion_is_refused(tmp_path):
    """A token signed with HS256 using the server's *public* key as the
    secret: the public key is never an HMAC secret here."""
    key, public = rsa_key()
    server = await auth_server(tmp_path, "optional", public=public)
    try:
        rsa_token = token("Teacher", key, algorithm="RS256")
        good = await client(server, rsa_token)
        assert (await good.reply())["status"] is True
        forged = jwt.api_jws.PyJWS()
        forged._algorithms["HS256"].prepare_key = lambda k: k  # allow a PEM
        payload = json.dumps(
            {"sub": "Teacher", "exp": int(time.time() + HOUR)}
        ).encode()
        confused = forged.encode(payload, public, algorithm="HS256")
        user = await client(server, confused)
        reply, code, _ = await refused_at_open(user)
        assert reply["reason"] == "TokenBadSignature" and code == 4401
        wrong_rsa, _ = rsa_key()
        user = await client(server, token("Teacher", wrong_rsa, algorithm="RS256"))
        reply, code, _ = await refused_at_open(user)
        assert reply["reason"] == "TokenBadSignature" and code == 4401
    finally:
        await server.stop()


# -- nicknames -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_token_holder_may_take_only_its_nickname(optional):
    teacher = await client(optional, token("Teacher"))
    await teacher.reply()
    other = await teacher.register("Someone")
    assert (other["reason"], other["error"]) == ("NameAlreadyUsed", "token")
    variant = await teacher.register("  teacher ")
    assert variant["status"] is True and variant["verified"] is True
    change = await teacher.register("Someone")
    assert change["action"] == "change"
    assert (change["reason"], change["error"]) == ("NameAlreadyUsed", "token")


IMPERSONATIONS = [
    "Teacher",
    "teacher",
    "TEACHER",
    "Tеacher",  # Cyrillic е
    "Ｔｅａｃｈｅｒ",  # fullwidth
    "Teacher   ",
    "  Teacher",
]


@pytest_twisted.ensureDeferred
async def test_impersonation_while_the_verified_user_is_offline(optional):
    teacher = await verified(optional, "Teacher")
    await teacher.say("hello")
    teacher.sendClose()
    await teacher.wait_closed()
    await until(lambda: optional.factory.rooms.registered_count() == 0)
    impostor = await client(optional)
    for name in IMPERSONATIONS:
        reply = await impostor.register(name)
        assert (reply["status"], reply["reason"], reply.get("error")) == (
            False,
            "NameAlreadyUsed",
            "verified",
        ), name
    assert (await impostor.register("Student"))["status"] is True
    for name in IMPERSONATIONS:
        reply = await impostor.register(name)
        assert (reply["action"], reply["reason"], reply.get("error")) == (
            "change",
            "NameAlreadyUsed",
            "verified",
        ), name
    # The teacher, back with its token, takes it again.
    again = await verified(optional, "Teacher")
    assert again is not None


@pytest_twisted.ensureDeferred
async def test_a_token_for_a_look_alike_cannot_take_the_verified_nickname(optional):
    # `Ian` and `Lan` share an ARNS key (capital I, small l), so a token for
    # one must not take the other, nor lock its owner out.
    teacher = await verified(optional, "Lan")
    teacher.sendClose()
    await teacher.wait_closed()
    await until(lambda: optional.factory.rooms.registered_count() == 0)
    student = await client(optional, token("Ian"))
    assert (await student.reply())["status"] is True
    for name in ("Lan", "lan", "LAN"):
        reply = await student.register(name)
        assert (reply["status"], reply.get("error")) == (False, "token"), name
    reply = await student.register("Ian")
    assert (reply["status"], reply.get("error")) == (False, "verified")
    again = await verified(optional, "Lan")
    assert again is not None


@pytest_twisted.ensureDeferred
async def test_auth_turned_off_frees_verified_nicknames_and_on_again_keeps_them(
    tmp_path,
):
    server = await auth_server(tmp_path, "optional")
    try:
        teacher = await verified(server, "Teacher")
        teacher.sendClose()
        await teacher.wait_closed()
    finally:
        await server.stop()
    # With --auth off nobody could ever show a token for it.
    off = await start_server(tmp_path / "data.json")
    try:
        anyone = await client(off)
        reply = await anyone.register("Teacher")
        assert reply["status"] is True, reply
        anyone.sendClose()
        await anyone.wait_closed()
    finally:
        await off.stop()
    server = await auth_server(tmp_path, "optional")
    try:
        impostor = await client(server)
        reply = await impostor.register("Teacher")
        assert (reply["status"], reply.get("error")) == (False, "verified")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_guest_squatting_is_kicked_when_the_verified_user_arrives(optional):
    squatter = await guest(optional, "Teacher")
    watcher = await guest(optional, "watcher")
    teacher = await client(optional, token("Teacher"))
    assert (await teacher.reply())["status"] is True
    reply = await teacher.register("Teacher")
    assert reply["status"] is True and reply["verified"] is True
    notice = await squatter.reply()
    assert notice == {
        "type": "moderation",
        "action": "kick",
        "reason": "this nickname belongs to a verified user",
        "until": None,
    }
    assert await squatter.close_code_from_server() == 4001
    seen = [(await watcher.event()) for _ in range(2)]
    assert [e["datatype"] for e in seen] == ["leave", "register"]
    assert seen[1]["verified"] is True
    # The same person in a second tab is refused at once.
    second = await client(optional, token("Teacher"))
    await second.reply()
    started = time.monotonic()
    taken = await second.register("Teacher")
    assert taken["reason"] == "NameAlreadyUsed" and time.monotonic() - started < 2


@pytest_twisted.ensureDeferred
async def test_a_guest_is_kicked_even_when_protection_is_refused(optional, monkeypatch):
    """Past 10,000 verified names the rules refuse a new protection (so no
    `verify` order kicks anyone); the token still works for its connection,
    whose claim kicks the guest itself, audited as the verified user's."""
    from chatbox.admin.moderator import ModerationError

    def refused(operator, name, rooms):
        raise ModerationError(400, "at most 10000 verified names")

    monkeypatch.setattr(optional.factory.moderator, "verify", refused)
    squatter = await guest(optional, "Teacher")
    with Log() as log:
        teacher = await client(optional, token("Teacher"))
        await teacher.reply()
        reply = await teacher.register("Teacher")
        assert reply["status"] is True and reply["verified"] is True
    notice = await squatter.reply()
    assert notice["reason"] == "this nickname belongs to a verified user"
    assert await squatter.close_code_from_server() == 4001
    assert "nickname 'Teacher' not protected: at most 10000 verified names" in log.text
    assert any(
        line.startswith("audit: verified 'Teacher' (secret) kick 'Teacher'")
        for line in log.lines
    ), log.text


@pytest_twisted.ensureDeferred
async def test_a_guest_that_never_leaves_costs_the_verified_claim_5_seconds(
    optional, monkeypatch
):
    """A holder the kick cannot move (here: a kick that does nothing):
    the claim is asked again for 5 s, then NameAlreadyUsed, and the
    connection's later requests waited for that reply."""
    from twisted.internet.defer import succeed

    monkeypatch.setattr(optional.factory.moderator, "verify", lambda *a: succeed(True))
    kicks = []
    monkeypatch.setattr(
        optional.factory.moderator, "kick", lambda *a: kicks.append(a) or succeed(0)
    )
    await guest(optional, "Teacher")
    teacher = await client(optional, token("Teacher"))
    await teacher.reply()
    started = time.monotonic()
    teacher.send_json({"type": "name", "name": "Teacher"})
    teacher.send_json({"type": "get"})
    taken = await teacher.reply()
    waited = time.monotonic() - started
    assert (taken["status"], taken["reason"]) == (False, "NameAlreadyUsed")
    assert 4.5 <= waited <= 8, waited
    assert (await teacher.reply())["reason"] == "UnknownRegister"
    assert 4 <= len(kicks) <= 6  # once a second, not every 100 ms
    assert kicks[0][0] == "verified 'Teacher' (secret)"
    assert kicks[0][1:] == ("Teacher", "", "this nickname belongs to a verified user")


@pytest_twisted.ensureDeferred
async def test_requests_after_a_contested_name_wait_for_its_reply(optional):
    await guest(optional, "Teacher")
    teacher = await client(optional, token("Teacher"))
    await teacher.reply()
    teacher.send_json({"type": "name", "name": "Teacher"})
    teacher.send_json({"type": "send", "content": "first words"})
    registered = await teacher.reply()
    sent = await teacher.reply()
    assert registered["action"] == "register" and registered["status"] is True
    assert sent["type"] == "send" and sent["status"] is True


@pytest_twisted.ensureDeferred
async def test_verified_marker_in_get_with_1000_users(tmp_path):
    """1,000 online, every tenth verified: get's data.verified is exactly
    those, in online order."""
    optional = await auth_server(
        tmp_path,
        "optional",
        "--max-connections-per-ip=0",
        "--ws-ping-interval=0",
        "--handshake-timeout=60",
    )
    names = [f"user{i:04d}" for i in range(1000)]

    async def join(name: str) -> ChatClientProtocol:
        if int(name[4:]) % 10 == 0:
            client = await verified(optional, name)
        else:
            client = await guest(optional, name)
        # Registered and counted; the 500,000 joins it would now read are
        # left to the kernel's buffers (about 100 KB each, far below
        # --max-pending-output), or parsing them here is most of the test.
        client.transport.pauseProducing()
        return client

    users = []
    for start in range(0, len(names), 100):
        users += await together(join(n) for n in names[start : start + 100])
    reader = await guest(optional, "reader")
    page = await reader.get()
    online = page["data"]["online"]
    assert len(online) == 1001
    assert page["data"]["verified"] == [n for n in online if n in names[::10]]
    assert len(page["data"]["verified"]) == 100
    for user in users:
        user.transport.abortConnection()
    await optional.stop()


# -- an attacker ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ten_thousand_bad_auth_requests_are_rate_limited_then_closed(tmp_path):
    server = await auth_server(tmp_path, "optional", "--rate=5", "--burst=20")
    try:
        with Log() as log:
            port = server.port
            bad_token = token("x", WRONG_SECRET)

            def flood() -> tuple[int, int, int | None, float]:
                started = time.monotonic()
                raw = RawClient(port)
                bad = json.dumps({"type": "auth", "token": bad_token})
                frames = 0
                try:
                    for _ in range(10_000):
                        raw.send(bad.encode())
                        frames += 1
                except OSError:
                    pass
                replies = refused = 0
                code = None
                try:
                    while True:
                        opcode, payload = raw.frame()
                        if opcode == 8:
                            code = int.from_bytes(payload[:2], "big")
                            break
                        reply = json.loads(payload)
                        replies += 1
                        refused += reply.get("reason") == "TokenBadSignature"
                except (OSError, ConnectionError):
                    pass
                return refused, replies, code, time.monotonic() - started

            refused, replies, code, took = await deferToThread(flood)
        assert code == 1008
        # Checked: the burst, and what --rate refilled while it flooded.
        assert refused <= 20 + 5 * took + 1, (refused, took)
        assert replies < 200
        lines = [line for line in log.lines if not line.startswith("{")]
        assert len(lines) < 60, len(lines)
        for part in secret_parts(bad_token):
            assert part not in log.text
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_one_address_checks_few_tokens_however_many_connections(tmp_path):
    """Each `auth` costs a signature check: 200 connections of one address
    asking within their own --rate must not make the server check 200
    times the rate (attacker review: 76% of a core). They share the
    address's registration budget."""
    server = await auth_server(
        tmp_path, "optional", "--ip-name-rate=5", "--ip-name-burst=20"
    )
    try:
        bad = token("x", WRONG_SECRET)
        users = [await client(server) for _ in range(50)]
        replies = []
        for _ in range(2):
            for user in users:
                replies.append(await user.request({"type": "auth", "token": bad}))
        checked = [r for r in replies if r["reason"] == "TokenBadSignature"]
        limited = [r for r in replies if r["reason"] == "RateLimited"]
        assert len(checked) <= 20 + 5 * 5, len(checked)
        assert len(checked) + len(limited) == 100
        assert all(r["type"] == "auth" for r in limited)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_oversized_tokens(optional):
    """8 KiB tokens: an `auth` request gets TokenMalformed; in a header the
    head is too large (431); in a URL the target is (414), as is a 100 KB
    URL. None of them appear in the log."""
    huge = token("Teacher", padding="p" * 9000)
    assert len(huge) > 8192
    with Log() as log:
        user = await client(optional)
        reply = await user.request({"type": "auth", "token": huge})
        assert reply["reason"] == "TokenMalformed"
        assert huge not in json.dumps(reply)
        status, _, _ = await raw_get(
            optional.port, "/", websocket=True, Authorization=f"Bearer {huge}"
        )
        assert status == 431
        status, _, _ = await raw_get(optional.port, f"/?token={huge}", websocket=True)
        assert status == 414
        status, _, _ = await raw_get(
            optional.port, "/?token=" + huge * 12, websocket=True
        )
        assert status == 414
        # A fragment, which Autobahn would have logged, is refused first.
        fragment = token("Teacher")
        status, _, _ = await raw_get(
            optional.port, f"/#?token={fragment}", websocket=True
        )
        assert status == 400
    assert huge[40:80] not in log.text
    assert fragment.split(".")[2] not in log.text


# -- tokens are never logged ---------------------------------------------------


def secret_parts(*tokens: str) -> list[str]:
    """What of each token must never be logged: its signature, and the
    whole of it."""
    return [t for t in tokens] + [t.rsplit(".", 1)[-1] for t in tokens if "." in t]


@pytest_twisted.ensureDeferred
async def test_no_token_in_this_process_log(optional):
    accepted, refused = token("Teacher"), token("Teacher", WRONG_SECRET)
    expired = token("Aide", expires_in=-HOUR)
    with Log() as log:
        await verified(optional, "Teacher")
        for encoded in (refused, expired, "not.a.token"):
            user = await client(optional, encoded)
            await refused_at_open(user)
        user = await client(optional, header=accepted)
        await user.reply()
        await user.request({"type": "auth", "token": refused})
        await raw_get(optional.port, f"/?token={accepted}")
        await raw_get(optional.port, f"/nope?token={accepted}", method="HEAD")
        await raw_get(optional.port, f"/metrics?token={accepted}", method="HEAD")
        await raw_get(optional.port, f"/healthz?token={accepted}")
        await raw_get(optional.port, f"/?token={accepted}", method="POST")
    assert log.lines, "nothing was logged at all"
    for part in secret_parts(accepted, refused, expired):
        assert part not in log.text


@pytest_twisted.ensureDeferred
async def test_no_token_in_the_log_operators_read(tmp_path):
    """A real twistd child: its whole output, with tokens shown in URLs and
    headers, accepted and refused, on the socket and on the page."""
    secret = tmp_path / "auth-secret"
    secret.write_bytes(SECRET)
    child = await process.start(
        tmp_path, "--auth=optional", f"--auth-secret={secret}", "--json-ping=5"
    )
    try:
        url = child.url
        accepted, refused = token("Teacher"), token("Teacher", WRONG_SECRET)
        expired = token("Aide", expires_in=-HOUR)
        teacher = await verified(url, "Teacher")
        await teacher.say("hi")
        for encoded in (refused, expired):
            await refused_at_open(await client(url, encoded))
            await refused_at_open(await client(url, header=encoded))
        user = await client(url, header=accepted)
        await user.reply()
        await user.request({"type": "auth", "token": refused})
        port = child.port
        for method in ("GET", "HEAD", "POST"):
            for path in ("/", "/metrics", "/healthz", "/static/app.js", "/room"):
                await raw_get(port, f"{path}?token={accepted}", method=method)
        await raw_get(port, f"/#?token={accepted}", websocket=True)
        await raw_get(port, f"/?token={accepted}&x=\x01", websocket=True)
        teacher.sendClose()
        await teacher.wait_closed()
    finally:
        await child.kill(__import__("signal").SIGTERM)
    output = child.output.decode("utf-8", "replace")
    assert "connection from" in output  # the log is being written
    for part in secret_parts(accepted, refused, expired):
        assert part not in output, part
