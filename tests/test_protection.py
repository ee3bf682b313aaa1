"""Verified nicknames as clients see them, over real sockets (issue 15):
the Moderator protects a nickname, guests holding it are kicked on every
node, look-alikes are refused, and the rules outlive a restart. Tokens on
the wire are tests/test_auth*'s; here a connection's Identity is set on the
server side, as the handshake would."""

import json
import time

import jwt
import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from chatbox.admin.moderator import (
    CLOSE_KICKED,
    VERIFIED_KICK,
    ModerationError,
)
from chatbox.auth.identity import Identity
from tests.client import user_at
from tests.server import start_server
from tests.test_cluster import LEASE, redis, sleep  # noqa: F401 (fixture)

OPERATOR = "ops"
SECRET = b"s" * 32
LAN = "Ms Lan"
LOOK_ALIKES = ("Ms Lаn", "MS LAN", "Ｍｓ Ｌａｎ", "ms  lan")  # Cyrillic а second


def moderator_of(server):
    return server.service.getServiceNamed("chat").moderator


def connection_of(server, name):
    """The server's side of the connection holding `name`."""
    found = [
        connection
        for connection in server.factory.connections
        if connection.room is not None and connection.room.name_of(connection) == name
    ]
    assert len(found) == 1, found
    return found[0]


def kicked_notice():
    return {
        "type": "moderation",
        "action": "kick",
        "reason": VERIFIED_KICK,
        "until": None,
    }


async def refused_as_verified(client, name):
    reply = await client.register(name)
    assert (reply["status"], reply["reason"], reply.get("error")) == (
        False,
        "NameAlreadyUsed",
        "verified",
    ), (name, reply)


async def auth_on(data_file, *args):
    """A server with --auth optional: protections are enforced only with
    auth on (under --auth off nobody could show a token for them)."""
    secret = data_file.parent / "auth-secret"
    secret.write_bytes(SECRET)
    return await start_server(
        data_file, "--auth=optional", f"--auth-secret={secret}", *args
    )


@pytest_twisted.async_yield_fixture
async def server(data_file):
    running = await auth_on(data_file)
    yield running
    await running.stop()


@pytest.fixture
def audit_lines():
    lines: list[str] = []

    def observe(event):
        line = formatEvent(event)
        if line.startswith("audit: "):
            lines.append(line)

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_a_guest_holding_a_nickname_is_kicked_when_it_becomes_verified(server):
    guest = await server.user("ms lan")
    bystander = await server.user("alice")
    assert await moderator_of(server).verify(OPERATOR, LAN, None) is True
    assert await guest.reply() == kicked_notice()
    assert await guest.close_code_from_server() == CLOSE_KICKED
    assert guest.closed.result[1] == VERIFIED_KICK
    left = await bystander.event()
    assert (left["datatype"], left["name"]) == ("leave", "ms lan")
    # Nobody without a token takes it back, in any spelling.
    again = await server.client()
    for name in (LAN, *LOOK_ALIKES):
        await refused_as_verified(again, name)
    assert (await again.register("Ms Lam"))["status"] is True
    changed = await again.request({"type": "name", "name": "MS LAN"})
    assert (changed["action"], changed["error"]) == ("change", "verified")
    assert (await bystander.say("still here"))["status"] is True


@pytest_twisted.ensureDeferred
async def test_the_holder_with_a_token_for_it_is_not_kicked(server):
    owner = await server.user("MS LAN")
    connection_of(server, "MS LAN").identity = Identity(LAN, 2**62)
    guest = await server.user("Bob")
    await moderator_of(server).verify(OPERATOR, "bob", None)
    await moderator_of(server).verify(OPERATOR, LAN, None)
    assert await guest.close_code_from_server() == CLOSE_KICKED
    assert (await owner.say("still mine"))["status"] is True


@pytest_twisted.ensureDeferred
async def test_protection_covers_its_rooms_and_widens(data_file):
    running = await auth_on(data_file, "--rooms=class-7a,class-7b")
    moderator = moderator_of(running)
    try:
        here = await user_at(f"{running.url}/class-7a", "Ms Lan")
        there = await user_at(f"{running.url}/class-7b", "ms lan")
        default = await running.user("MS LAN")
        assert await moderator.verify(OPERATOR, LAN, {"class-7a"}) is True
        assert await here.close_code_from_server() == CLOSE_KICKED
        assert (await there.say("not covered"))["status"] is True
        assert (await default.say("nor here"))["status"] is True
        # Covered already: no new order, nobody kicked.
        assert await moderator.verify(OPERATOR, "MS LAN", ["class-7a"]) is False
        # A later token naming the default room too widens it.
        assert await moderator.verify(OPERATOR, LAN, ["", "class-7a"]) is True
        assert await default.close_code_from_server() == CLOSE_KICKED
        assert (await there.say("still not covered"))["status"] is True
        assert moderator.verified_names() == [
            {
                "name": LAN,
                "rooms": ["", "class-7a"],
                "by": OPERATOR,
                "at": moderator.verified_names()[0]["at"],
            }
        ]
        guest = await running.client()
        await refused_as_verified(guest, "Ms Lаn")
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_unverify_frees_the_nickname(server, audit_lines):
    moderator = moderator_of(server)
    await moderator.verify(OPERATOR, LAN, None)
    guest = await server.client()
    await refused_as_verified(guest, "ms lan")
    assert await moderator.unverify(OPERATOR, "ＭＳ ＬＡＮ") is True
    assert await moderator.unverify(OPERATOR, LAN) is False
    assert moderator.verified_names() == []
    assert (await guest.register("ms lan"))["status"] is True
    assert [line.split(" reason=")[0] for line in audit_lines] == [
        "audit: ops verify 'Ms Lan' in every room",
        "audit: ops unverify 'ＭＳ ＬＡＮ'",
    ]


@pytest_twisted.ensureDeferred
async def test_a_look_alike_of_a_verified_nickname_cannot_be_verified_too(server):
    # `Ian` shares an ARNS key with `Lan` (capital I, small l): verified
    # both, each would stop the other's owner.
    moderator = moderator_of(server)
    await moderator.verify(OPERATOR, "Lan", ["class-7a"])
    with pytest.raises(ModerationError) as refused:
        await moderator.verify(OPERATOR, "Ian", None)
    assert refused.value.status == 409
    assert "looks like the verified nickname 'Lan'" in refused.value.message
    # Another spelling of its own name only widens it.
    assert await moderator.verify(OPERATOR, "LAN", None) is True
    assert [p["name"] for p in moderator.verified_names()] == ["Lan"]


@pytest.mark.parametrize(
    ("name", "rooms", "status"),
    [
        ("chatbox", None, 400),
        ("ChаtBox", None, 400),  # Cyrillic а
        ("", None, 400),
        (LAN, [], 400),
        (LAN, ["Class 7"], 400),
        (LAN, "class-7a", 400),
    ],
)
@pytest_twisted.ensureDeferred
async def test_what_cannot_be_verified_is_refused(server, name, rooms, status):
    with pytest.raises(ModerationError) as refused:
        await moderator_of(server).verify(OPERATOR, name, rooms)
    assert refused.value.status == status
    assert moderator_of(server).verified_names() == []


@pytest_twisted.ensureDeferred
async def test_verified_nicknames_survive_a_restart(data_file):
    running = await auth_on(data_file)
    await moderator_of(running).verify(OPERATOR, LAN, ["", "class-7a"])
    await running.stop()
    stored = json.loads((data_file.parent / "data.moderation.json").read_text())
    assert stored["verified"] == [
        {
            "name": LAN,
            "rooms": ["", "class-7a"],
            "by": OPERATOR,
            "at": stored["verified"][0]["at"],
        }
    ]
    running = await auth_on(data_file)
    try:
        guest = await running.client()
        await refused_as_verified(guest, "MS LAN")
        assert [p["name"] for p in moderator_of(running).verified_names()] == [LAN]
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_restored_snapshot_kicks_guests_holding_what_it_protects(server):
    """A cluster node that fell behind reloads the rules whole: a verify
    among the orders it skipped must still free the nickname here."""
    guest = await server.user("ms lan")
    other = await server.user("alice")
    snapshot = server.factory.moderation.snapshot()
    snapshot["verified"] = [{"name": LAN, "rooms": None, "by": "x", "at": 1}]
    moderator_of(server).restore(snapshot)
    assert await guest.reply() == kicked_notice()
    assert await guest.close_code_from_server() == CLOSE_KICKED
    assert (await other.say("still here"))["status"] is True


@pytest_twisted.ensureDeferred
async def test_ten_thousand_verified_nicknames(server):
    moderator = moderator_of(server)
    started = time.monotonic()
    for start in range(0, 10_000, 1_000):
        await _together(
            moderator.verify(OPERATOR, f"teacher {n}", [f"class-{n % 40}"])
            for n in range(start, start + 1_000)
        )
    print(f"\n10,000 verify orders: {time.monotonic() - started:.1f} s")
    with pytest.raises(ModerationError) as refused:
        await moderator.verify(OPERATOR, "one too many", None)
    assert refused.value.status == 409
    # Widening one verified already is no new name.
    assert await moderator.verify(OPERATOR, "TEACHER 5", None) is True
    guest = await server.client()
    await refused_as_verified(guest, "Teacher 5")
    assert (await guest.register("teacher 6"))["status"] is True  # not this room
    stored = json.loads((server.data.parent / "data.moderation.json").read_text())
    assert len(stored["verified"]) == 10_000


async def _together(deferreds):
    from twisted.internet.defer import gatherResults

    await gatherResults(list(deferreds), consumeErrors=True)


@pytest_twisted.ensureDeferred
async def test_unmute_lifts_the_rooms_mutes_on_a_name_and_no_others(data_file):
    running = await auth_on(data_file, "--rooms=class-7a,class-7b")
    moderator = moderator_of(running)
    try:
        loud = await user_at(f"{running.url}/class-7a", "Loud")

        async def mute(room, name="loud"):
            return await moderator.sanction(
                OPERATOR, "mute", "name", name, "r", 600, room, False, "203.0.113.1"
            )

        await mute("class-7a")
        await mute("class-7a", "LОUD")  # Cyrillic О: a second mute, same person
        await mute("class-7b")
        await mute(None)
        await loud.reply(), await loud.reply(), await loud.reply()
        assert await moderator.unmute(OPERATOR, "loud", "class-7a") == 2
        assert await moderator.unmute(OPERATOR, "loud", "class-7a") == 0
        assert await moderator.unmute(OPERATOR, "nobody", "class-7a") == 0
        left = {(m["value"], m["room"]) for m in moderator.sanctions("mute")}
        assert left == {("loud", "class-7b"), ("loud", None)}
        for _ in range(2):
            assert (await loud.reply())["action"] == "unmute"
        assert (await loud.say("still muted everywhere"))["reason"] == "Muted"
    finally:
        await running.stop()


# -- minting: the server's own secret --


@pytest_twisted.ensureDeferred
async def test_minting_needs_the_servers_secret(data_file):
    plain = await start_server(data_file)  # --auth off, no secret
    try:
        with pytest.raises(ModerationError) as refused:
            await moderator_of(plain).mint(OPERATOR, LAN, [], None, 30)
        assert refused.value.status == 409
        assert refused.value.message == (
            "this server has no --auth-secret to sign tokens with"
        )
        assert moderator_of(plain).verified_names() == []
    finally:
        await plain.stop()


@pytest_twisted.ensureDeferred
async def test_a_minted_token_protects_its_nickname_and_is_never_audited(
    data_file, audit_lines
):
    running = await auth_on(data_file, "--rooms=class-7a")
    moderator = moderator_of(running)
    try:
        guest = await user_at(f"{running.url}/class-7a", "ms lan")
        before = int(time.time())
        minted = await moderator.mint(OPERATOR, LAN, ["moderator"], ["class-7a"], 7)
        assert await guest.close_code_from_server() == CLOSE_KICKED
        assert set(minted) == {"token", "name", "rooms", "roles", "expires"}
        assert (minted["name"], minted["rooms"], minted["roles"]) == (
            LAN,
            ["class-7a"],
            ["moderator"],
        )
        claims = jwt.decode(minted["token"], SECRET, algorithms=["HS256"])
        assert claims["sub"] == LAN and claims["rooms"] == ["class-7a"]
        assert minted["expires"] == claims["exp"] * 1000
        assert before + 7 * 86400 <= claims["exp"] <= int(time.time()) + 7 * 86400
        assert moderator.verified_names()[0]["rooms"] == ["class-7a"]
        # The token appears in no audit line; its jti does.
        assert audit_lines
        assert not [line for line in audit_lines if minted["token"] in line]
        assert not [
            line
            for line in audit_lines
            for part in minted["token"].split(".")
            if part in line
        ]
        assert any(claims["jti"] in line for line in audit_lines)
        # A room the server does not have is a typo, not a token.
        with pytest.raises(ModerationError) as refused:
            await moderator.mint(OPERATOR, LAN, [], ["class-7z"], 7)
        assert refused.value.status == 404
        for bad in ({"days": 0}, {"days": 367}, {"days": True}, {"name": "chatbox"}):
            fields = {"name": LAN, "days": 30} | bad
            with pytest.raises(ModerationError) as refused:
                await moderator.mint(OPERATOR, fields["name"], [], None, fields["days"])
            assert refused.value.status == 400, bad
    finally:
        await running.stop()


# -- a cluster: the orders reach every node --


@pytest_twisted.ensureDeferred
async def test_a_verified_nickname_is_protected_on_every_node(tmp_path, redis):  # noqa: F811
    nodes = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        nodes.append(
            await auth_on(
                tmp_path / name / "data.json",
                f"--redis={redis.url}",
                f"--redis-lease={LEASE}",
            )
        )
    one, two = nodes
    try:
        await _joined(one, two)
        guest = await two.user("ms lan")
        started = time.monotonic()
        await moderator_of(one).verify(OPERATOR, LAN, None)
        assert await guest.reply() == kicked_notice()
        assert await guest.close_code_from_server() == CLOSE_KICKED
        took = time.monotonic() - started
        print(f"\nverify on node one -> kick on node two: {took:.3f} s")
        again = await two.client()
        await refused_as_verified(again, "MS LАN")  # Cyrillic А
        assert moderator_of(two).verified_names()[0]["name"] == LAN
        await moderator_of(two).unverify(OPERATOR, "ms lan")
        deadline = time.monotonic() + 5
        while moderator_of(one).verified_names():
            assert time.monotonic() < deadline
            await sleep(0.05)
        first = await one.client()
        assert (await first.register(LAN))["status"] is True
    finally:
        for node in nodes:
            await node.stop()


async def _joined(*nodes) -> None:
    deadline = time.monotonic() + 15
    for node in nodes:
        room = node.service.getServiceNamed("chat").rooms.default
        while not getattr(room, "ready", True):
            assert time.monotonic() < deadline, "a node never joined"
            await sleep(0.05)
