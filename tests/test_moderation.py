"""An operator's actions as clients see them, over real sockets, one
process: the Moderator (chatbox.admin.moderator) is called directly here;
tests/test_admin.py drives the same through the admin API and the CLI, and
tests/test_cluster_moderation.py across two nodes."""

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from chatbox.admin.moderator import CLOSE_BANNED, CLOSE_KICKED, ModerationError
from chatbox.chat.moderation import Moderation, Sanction
from tests import test_classic_client
from tests.client import (
    classic_browser,
    connect,
    raw_get,
    together,
    user_at,
)
from tests.server import start_server

OPERATOR = "ops"
HERE = "127.0.0.1"


def moderator_of(server):
    return server.service.getServiceNamed("chat").moderator


async def ban(server, target, value, **fields):
    made = await moderator_of(server).sanction(
        OPERATOR,
        fields.pop("kind", "ban"),
        target,
        value,
        fields.pop("reason", "spam"),
        fields.pop("duration", None),
        fields.pop("room", None),
        fields.pop("force", False),
        fields.pop("client_address", "203.0.113.1"),
    )
    assert not fields
    return made


async def sleep(seconds):
    await deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_kick_tells_why_closes_with_4001_and_everyone_sees_the_leave(server):
    spammer = await server.user("spammer")
    alice = await server.user("alice")
    assert (await moderator_of(server).kick(OPERATOR, "SPAMMER", None, "flood")) == 1
    notice = await spammer.reply()
    assert notice == {
        "type": "moderation",
        "action": "kick",
        "reason": "flood",
        "until": None,
    }
    assert await spammer.close_code_from_server() == CLOSE_KICKED
    assert spammer.closed.result[1] == "flood"
    left = await alice.event()
    assert (left["datatype"], left["name"]) == ("leave", "spammer")
    # A kick is not a ban: the same nickname may come back at once.
    again = await server.user("spammer")
    await again.say("sorry")


@pytest_twisted.ensureDeferred
async def test_a_kick_in_one_room_leaves_the_same_name_elsewhere(data_file):
    running = await start_server(data_file, "--rooms=class-7a,class-7b")
    try:
        here = await user_at(f"{running.url}/class-7a", "sam")
        there = await user_at(f"{running.url}/class-7b", "sam")
        kicked = await moderator_of(running).kick(OPERATOR, "sam", "class-7a", "x")
        assert kicked == 1
        assert await here.close_code_from_server() == CLOSE_KICKED
        assert (await there.say("still here"))["status"] is True
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_long_reason_is_cut_to_fit_a_close_frame(server):
    user = await server.user("bob")
    reason = "ß" * 500  # 1,000 bytes of UTF-8
    await moderator_of(server).kick(OPERATOR, "bob", None, reason)
    assert (await user.reply())["reason"] == reason
    await user.close_code_from_server()
    said = user.closed.result[1]
    assert said == "ß" * 61  # 122 bytes: no half character


@pytest_twisted.ensureDeferred
async def test_a_name_ban_closes_its_holder_and_refuses_look_alikes(server):
    holder = await server.user("Troll")
    made = await ban(server, "name", "troll", duration=3600, reason="insults")
    notice = await holder.reply()
    assert notice["action"] == "ban"
    assert notice["until"] == made["expires"]
    assert await holder.close_code_from_server() == CLOSE_BANNED
    client = await server.client()
    for name in ("troll", "TROLL", "trоll", "TRoLL"):  # Cyrillic о
        reply = await client.register(name)
        assert reply == {
            "type": "name",
            "action": "register",
            "name": name,
            "status": False,
            "reason": "NameAlreadyUsed",
            "error": "banned",
        }
    await client.register("alice")
    changed = await client.request({"type": "name", "name": "Troll"})
    assert (changed["action"], changed["reason"]) == ("change", "NameAlreadyUsed")
    await moderator_of(server).lift(OPERATOR, "ban", made["id"])
    assert (await client.register("troll"))["status"] is True


@pytest_twisted.ensureDeferred
async def test_an_address_ban_refuses_the_page_and_the_handshake_but_not_health(
    server,
):
    user = await server.user("alice")
    made = await ban(server, "address", HERE, duration=90, force=True)
    assert await user.close_code_from_server() == CLOSE_BANNED
    for websocket in (True, False):
        status, headers, body = await raw_get(server.port, "/", websocket=websocket)
        assert status == 403
        assert 89 <= int(headers["retry-after"]) <= 90
        assert b"banned" in body and "bị cấm".encode() in body
        assert b"spam" in body
    status, _, _ = await raw_get(server.port, "/healthz")
    assert status == 200
    status, _, _ = await raw_get(server.port, "/static/app.js")
    assert status == 403
    with pytest.raises(ConnectionError):
        await connect(server.url)
    await moderator_of(server).lift(OPERATOR, "ban", made["id"])
    await server.user("alice")


@pytest_twisted.ensureDeferred
async def test_an_address_ban_follows_the_forwarded_address_from_a_trusted_proxy(
    data_file,
):
    running = await start_server(data_file, "--trusted-proxies=1")
    try:
        await ban(running, "address", "198.51.100.0/24")
        banned = {"X-Forwarded-For": "198.51.100.9"}
        assert (await raw_get(running.port, "/", **banned))[0] == 403
        fine = {"X-Forwarded-For": "198.51.101.9"}
        assert (await raw_get(running.port, "/", **fine))[0] == 200
    finally:
        await running.stop()


@pytest.mark.parametrize(
    "value", ["0.0.0.0/0", "10.0.0.0/7", "::/0", "2001::/15", "127.0.0.0/8"]
)
@pytest_twisted.ensureDeferred
async def test_a_ban_on_everyone_or_on_the_operator_is_refused_unless_forced(
    server, value
):
    with pytest.raises(ModerationError) as refused:
        await ban(server, "address", value, client_address=HERE)
    assert refused.value.status == 409
    assert moderator_of(server).sanctions("ban") == []
    await ban(server, "address", value, client_address=HERE, force=True)
    assert len(moderator_of(server).sanctions("ban")) == 1


@pytest_twisted.ensureDeferred
async def test_a_mute_refuses_sends_with_retry_after_until_it_ends(server):
    muted = await server.user("loud")
    other = await server.user("quiet")
    carol = await server.user("carol")
    await other.event()  # carol joined
    await ban(server, "name", "LOUD", kind="mute", duration=1.5, reason="calm down")
    notice = await muted.reply()
    assert (notice["action"], notice["reason"]) == ("mute", "calm down")
    reply = await muted.say("hello?")
    assert reply["status"] is False
    assert (reply["reason"], reply["error"]) == ("Muted", "calm down")
    assert (reply["type"], reply["username"], reply["content"]) == (
        "send",
        "loud",
        "hello?",
    )
    assert 0 < reply["retry_after"] <= 1.5
    muted.send_json({"type": "typing"})
    await other.no_event_before(carol)  # no typing hint from the muted
    await sleep(reply["retry_after"] + 0.05)
    assert (await muted.say("better now"))["status"] is True


@pytest_twisted.ensureDeferred
async def test_lifting_a_mute_tells_the_user(server):
    user = await server.user("loud")
    made = await ban(server, "address", HERE, kind="mute", duration=600)
    await user.reply()
    assert (await user.say("x"))["reason"] == "Muted"
    await moderator_of(server).lift(OPERATOR, "mute", made["id"])
    assert (await user.reply())["action"] == "unmute"
    assert (await user.say("x"))["status"] is True


@pytest_twisted.ensureDeferred
async def test_slow_mode_holds_each_person_however_they_rename(server):
    alice = await server.user("alice")
    bob = await server.user("bob")
    await moderator_of(server).set_slow_mode(OPERATOR, "", 30)
    assert (await alice.say("one"))["status"] is True
    held = await alice.say("two")
    assert held["reason"] == "SlowMode" and 29 < held["retry_after"] <= 30
    assert (await alice.register("alice2"))["status"] is True
    assert (await alice.say("three"))["reason"] == "SlowMode"
    assert (await bob.say("mine"))["status"] is True
    await moderator_of(server).set_slow_mode(OPERATOR, "", 0)
    assert (await alice.say("four"))["status"] is True


@pytest_twisted.ensureDeferred
async def test_reserved_names_and_the_announcer_get_name_already_used(server):
    await moderator_of(server).reserve(OPERATOR, "teacher*")
    client = await server.client()
    for name in ("Teacher Lan", "Τeacher", "chatbox", "ChatBox"):
        reply = await client.register(name)
        assert (reply["reason"], reply["error"]) == ("NameAlreadyUsed", "reserved")
    assert await moderator_of(server).unreserve(OPERATOR, "teacher*") is True
    assert (await client.register("Teacher Lan"))["status"] is True


@pytest_twisted.ensureDeferred
async def test_the_classic_client_shows_an_announcement_as_a_message(server):
    classic = await classic_browser(server.port)
    await classic.register("old-client")
    posted = await moderator_of(server).announce(
        OPERATOR, None, False, "Server restarts at 18:00 🛠️"
    )
    event = await classic.event()
    assert event["datatype"] == "message"
    assert (event["name"], event["content"]) == (
        "chatbox",
        "Server restarts at 18:00 🛠️",
    )
    assert event["announcement"] is True and event["id"] == posted[0]["id"]
    stored = (await classic.get())["data"]["message"][-1]
    assert stored["announcement"] is True and stored["name"] == "chatbox"


@pytest_twisted.ensureDeferred
async def test_announcing_to_every_room_reaches_each_loaded_room(data_file):
    running = await start_server(data_file, "--rooms=a,b,c")
    try:
        users = [await user_at(f"{running.url}/{room}", "u") for room in "ab"]
        users.append(await running.user("u"))
        posted = await moderator_of(running).announce(OPERATOR, None, True, "hi all")
        assert sorted(p["room"] for p in posted) == ["", "a", "b"]
        for user in users:
            assert (await user.event())["content"] == "hi all"
        with pytest.raises(ModerationError) as missing:
            await moderator_of(running).announce(OPERATOR, "nope", False, "x")
        assert missing.value.status == 404
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_rules_survive_a_restart(data_file):
    running = await start_server(data_file)
    made = await ban(running, "name", "troll", duration=3600)
    await ban(running, "address", "192.0.2.0/24", kind="mute", duration=600)
    await moderator_of(running).reserve(OPERATOR, "teacher*")
    await moderator_of(running).set_slow_mode(OPERATOR, "", 5)
    await running.stop()
    stored = json.loads((data_file.parent / "data.moderation.json").read_text())
    assert stored["sanctions"][0]["id"] == made["id"]
    running = await start_server(data_file)
    try:
        client = await running.client()
        assert (await client.register("TROLL"))["error"] == "banned"
        assert (await client.register("teacher"))["error"] == "reserved"
        assert moderator_of(running).slow_modes() == {"": 5}
        assert len(moderator_of(running).sanctions("mute")) == 1
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_the_classic_session_is_unchanged_beside_moderation(server):
    """The classic client's whole session, with rules in force that do not
    concern it (a ban, a reserved pattern, slow mode off)."""
    await ban(server, "name", "someone-else")
    await moderator_of(server).reserve(OPERATOR, "teacher*")
    await test_classic_client.test_a_classic_session(server)


@pytest_twisted.ensureDeferred
async def test_six_thousand_bans_leave_handshakes_and_names_working(server):
    """What a script banning a botnet leaves: every ban kept (orders that
    arrive together share one rewrite of the rules file), and the checks on
    every handshake and name still answering."""
    moderator = moderator_of(server)
    for start in range(0, 2_000, 500):
        await together(
            ban(server, target, value)
            for n in range(start, start + 500)
            for target, value in (
                ("name", f"spammer{n}"),
                ("address", f"10.{n // 250}.{n % 250}.0/24"),
                ("address", f"2001:db8:{n:x}::1"),
            )
        )
    client = await server.client()
    assert (await client.register("spammer1999"))["error"] == "banned"
    assert (await client.register("fine"))["status"] is True
    assert len(moderator.sanctions("ban")) == 6_000
    for address in ("10.7.249.1", "2001:db8:7cf::1"):
        status, _, _ = await raw_get(server.port, "/", X_Forwarded_For=address)
        assert status == 200  # no trusted proxy: the header is not believed
    stored = json.loads((server.data.parent / "data.moderation.json").read_text())
    assert len(stored["sanctions"]) == 6_000


@pytest.mark.parametrize(
    "damage",
    [
        b"{not json",
        b"[]",
        b'{"sanctions": [{"id": "b-1", "kind": "exile"}]}',
    ],
)
@pytest_twisted.ensureDeferred
async def test_rules_that_cannot_be_read_stop_start_up_naming_the_file(
    data_file, damage
):
    """Starting without the operator's bans would let everyone banned back
    in: a damaged rules file is a refusal to start, in one line."""
    rules = data_file.parent / "data.moderation.json"
    rules.write_bytes(damage)
    with pytest.raises(SystemExit) as stopped:
        await start_server(data_file)
    assert str(rules) in str(stopped.value)
    assert rules.read_bytes() == damage  # never rewritten


@pytest_twisted.ensureDeferred
async def test_rules_restored_from_a_snapshot_close_whom_their_bans_cover(server):
    """A cluster node that fell behind the orders reloads the rules whole
    (chatbox.cluster.moderation): a ban among the orders it skipped must
    still close the banned user connected to it."""
    banned = await server.user("troll")
    fine = await server.user("alice")
    other = Moderation()
    made = Sanction.new("ban", "name", "TROLL", "insults", "ops", 0, None, None)
    other.apply({"op": "sanction", "sanction": made.to_dict()})
    moderator_of(server).restore(other.snapshot())
    assert (await banned.reply())["action"] == "ban"
    assert await banned.close_code_from_server() == CLOSE_BANNED
    assert (await fine.say("still here"))["status"] is True


@pytest_twisted.ensureDeferred
async def test_renaming_does_not_escape_a_mute(server):
    """Operator review: `Loud` muted, renamed to `Loud2`, sent and was
    stored. A muted connection cannot rename, and the mute holds it until
    it ends or is lifted."""
    loud = await server.user("Loud")
    made = await ban(server, "name", "Loud", kind="mute", duration=600)
    await loud.reply()  # the notice
    refused = await loud.register("Loud2")
    assert (refused["action"], refused["reason"]) == ("change", "Muted")
    assert (await loud.say("escaped?"))["reason"] == "Muted"
    await moderator_of(server).lift(OPERATOR, "mute", made["id"])
    await loud.reply()  # unmute
    assert (await loud.register("Loud2"))["status"] is True
    assert (await loud.say("back"))["status"] is True


@pytest_twisted.ensureDeferred
async def test_a_mute_made_before_the_nickname_was_taken_holds_it(server):
    """The same for a mute made before the nickname was taken."""
    await ban(server, "name", "Loud", kind="mute", duration=600)
    loud = await server.user("Loud")
    assert (await loud.say("x"))["reason"] == "Muted"
    assert (await loud.register("Quiet"))["reason"] == "Muted"
    assert (await loud.say("y"))["reason"] == "Muted"


@pytest.mark.parametrize(
    ("room", "status"), [("class-7c", 404), ("clas-7b", 404), ("Bad Name", 400)]
)
@pytest_twisted.ensureDeferred
async def test_a_room_that_cannot_exist_is_refused_not_ruled_on(
    data_file, room, status
):
    """Operator review: a typo in --room stored a ban for a room no one
    can enter, and the operator believed it in force."""
    running = await start_server(data_file, "--rooms=class-7a,class-7b")
    moderator = moderator_of(running)
    try:
        for action in (
            lambda: ban(running, "name", "Minh", room=room),
            lambda: moderator.kick(OPERATOR, "Minh", room, "x"),
            lambda: moderator.set_slow_mode(OPERATOR, room, 30),
            lambda: moderator.delete(OPERATOR, room, [1], "x"),
        ):
            with pytest.raises(ModerationError) as refused:
                await action()
            assert refused.value.status == status
        assert moderator.sanctions("ban") == [] and moderator.slow_modes() == {}
    finally:
        await running.stop()
    bare = await start_server(data_file)
    try:
        with pytest.raises(ModerationError) as refused:
            await ban(bare, "name", "Minh", room="class-7a")
        assert refused.value.status == 404
    finally:
        await bare.stop()


@pytest_twisted.ensureDeferred
async def test_a_muted_user_cannot_speak_through_renames(server):
    """Attacker review: muted by address, 50 renames to 'YOU ALL SUCK N'
    reached everyone as change events."""
    loud = await server.user("loud")
    other = await server.user("other")
    made = await ban(server, "address", HERE, kind="mute", duration=600, reason="r")
    await loud.reply()
    refused = await loud.register("YOU ALL SUCK")
    assert refused["status"] is False
    assert (refused["action"], refused["oldname"], refused["newname"]) == (
        "change",
        "loud",
        "YOU ALL SUCK",
    )
    assert refused["reason"] == "Muted" and 590 < refused["retry_after"] <= 600
    await moderator_of(server).lift(OPERATOR, "mute", made["id"])
    await loud.reply()  # unmuted
    await loud.say("marker")
    first = await other.event()  # no change event came before it
    assert (first["datatype"], first["content"]) == ("message", "marker")


@pytest_twisted.ensureDeferred
async def test_a_ban_on_one_ipv6_address_covers_its_64(server):
    """Attacker review: ::7 banned, ::8 of the same /64 walked in; every
    per-address limit counts an IPv6 subscriber by its /64."""
    made = await ban(server, "address", "2001:db8:1:2::7")
    assert made["value"] == "2001:db8:1:2::/64"
    rules = server.factory.moderation
    now = server.factory.now_ms()
    assert rules.on_address("ban", "2001:db8:1:2::8", None, now) is not None
    assert rules.on_address("ban", "2001:db8:1:3::7", None, now) is None
    wider = await ban(server, "address", "2001:db8:2::/48")
    assert wider["value"] == "2001:db8:2::/48"


@pytest_twisted.ensureDeferred
async def test_the_same_rule_again_replaces_the_one_in_force(server):
    """Attacker review: banning one address twice made two entries, both
    counted under the cap."""
    first = await ban(server, "name", "Troll", duration=60, reason="one")
    second = await ban(server, "name", "Troll", duration=3600, reason="two")
    other_room = await ban(server, "name", "Troll", room="", reason="here only")
    bans = moderator_of(server).sanctions("ban")
    assert {b["id"] for b in bans} == {second["id"], other_room["id"]}
    assert first["id"] not in {b["id"] for b in bans}


@pytest_twisted.ensureDeferred
async def test_a_muted_address_cannot_register_new_nicknames(server):
    """Second attacker review: from a muted address, 60 connections
    registered 'NN FREE ROBUX evil.example' and filled everyone's online
    list. Those registered before the mute stay, and read."""
    before = await server.user("before")
    await ban(server, "address", HERE, kind="mute", duration=600, reason="r")
    await before.reply()  # its notice
    late = await server.client()
    refused = await late.register("FREE ROBUX evil.example")
    assert (refused["action"], refused["reason"], refused["error"]) == (
        "register",
        "Muted",
        "r",
    )
    assert 590 < refused["retry_after"] <= 600
    online = (await before.get())["data"]["online"]
    assert online == ["before"]


@pytest_twisted.ensureDeferred
async def test_orders_submitted_as_earlier_ones_are_kept_never_write_twice_at_once(
    server,
):
    """Found under load by the 6,000 bans: an order submitted from the
    callback of an earlier one started a second write of the rules file
    beside the one already out, and the two renamed one temporary file."""
    moderator = moderator_of(server)

    async def chain(n):
        for step in range(5):
            await moderator.reserve(OPERATOR, f"chain{n}x{step}*")

    await together(chain(n) for n in range(50))
    stored = json.loads((server.data.parent / "data.moderation.json").read_text())
    assert len(stored["reserved"]) == 250
