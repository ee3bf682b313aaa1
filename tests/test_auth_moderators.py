"""Moderators inside the chat (issue 15): `moderate` requests over real
sockets, carried out by the same Moderator as the admin API, audited and
counted alike, limited to the moderator's own room and token."""

import re
import time

import pytest
import pytest_twisted

from chatbox.chat import moderation
from tests.client import no_events_before, raw_get, until
from tests.http import metric
from tests.test_auth import (
    Log,
    auth_server,
    client,
    guest,
    sleep,
    token,
    verified,
)
from tests.test_moderation import moderator_of

ROOMS = "--rooms=open"


@pytest_twisted.async_yield_fixture
async def chat(tmp_path):
    server = await auth_server(tmp_path, "optional", ROOMS)
    yield server
    await server.stop()


async def moderator(server, name="Teacher", path="", **claims):
    claims.setdefault("roles", ["moderator"])
    return await verified(server, name, path=path, **claims)


def audit_lines(log: Log) -> list[str]:
    return [line for line in log.lines if line.startswith("audit: ")]


async def moderate(user, action, **fields):
    return await user.request({"type": "moderate", "action": action, **fields})


@pytest_twisted.ensureDeferred
async def test_delete_kick_mute_unmute_slow_in_the_own_room(chat):
    with Log() as log:
        teacher = await moderator(chat, rooms=[""])
        pupil = await guest(chat, "pupil")
        await teacher.event()  # pupil joined
        said = await pupil.say("rude words")
        await teacher.event()
        deleted = await moderate(teacher, "delete", ids=[said["id"], 999])
        assert deleted == {
            "type": "moderate",
            "action": "delete",
            "status": True,
            "ids": [said["id"]],
        }
        event = await pupil.event()
        assert (event["datatype"], event["ids"]) == ("delete", [said["id"]])

        started = time.time() * 1000
        muted = await moderate(teacher, "mute", name="PUPIL", seconds=60, reason="calm")
        assert (muted["status"], muted["name"]) == (True, "PUPIL")
        assert started + 59_000 <= muted["until"] <= time.time() * 1000 + 61_000
        notice = await pupil.reply()
        assert (notice["type"], notice["action"], notice["reason"]) == (
            "moderation",
            "mute",
            "calm",
        )
        held = await pupil.say("again")
        assert held["reason"] == "Muted"
        unmuted = await moderate(teacher, "unmute", name="pupil")
        assert unmuted == {
            "type": "moderate",
            "action": "unmute",
            "status": True,
            "name": "pupil",
        }
        assert (await pupil.reply())["action"] == "unmute"
        again = await moderate(teacher, "unmute", name="pupil")
        assert again["reason"] == "NoSuchUser"

        slow = await moderate(teacher, "slow", seconds=30)
        assert slow == {
            "type": "moderate",
            "action": "slow",
            "status": True,
            "seconds": 30,
        }
        assert (await pupil.say("one"))["status"] is True
        assert (await pupil.say("two"))["reason"] == "SlowMode"
        off = await moderate(teacher, "slow", seconds=0)
        assert off["seconds"] == 0

        kicked = await moderate(teacher, "kick", name="pupil", reason="bye")
        assert kicked == {
            "type": "moderate",
            "action": "kick",
            "status": True,
            "name": "pupil",
        }
        assert (await pupil.reply())["action"] == "kick"
        assert await pupil.close_code_from_server() == 4001
        await until(lambda: chat.factory.rooms.registered_count() == 1)
        nobody = await moderate(teacher, "kick", name="pupil")
        assert nobody["reason"] == "NoSuchUser" and nobody["status"] is False
    audited = audit_lines(log)
    by = "moderator 'Teacher' (secret)"
    for action in ("delete", "mute", "unmute", "slow-mode", "kick"):
        assert any(line.startswith(f"audit: {by} {action} ") for line in audited), (
            action,
            audited,
        )
    _, _, body = await raw_get(chat.port, "/metrics")
    text = body.decode()
    assert metric(text, "chatbox_moderation_actions_total", action="kick") == 1
    assert metric(text, "chatbox_moderation_actions_total", action="mute") == 1


@pytest_twisted.ensureDeferred
async def test_a_moderator_of_one_room_acts_in_no_other(chat):
    """A moderator's token names its rooms, which are also the only rooms
    it is good in: elsewhere its handshake is refused (TokenWrongRoom), and
    there it is a guest at most (NotModerator). What it does in its room
    stays there."""
    encoded = token("Teacher", roles=["moderator"], rooms=["class-7a"])
    stray = await client(chat, encoded, path="/class-7b")
    refused = await stray.reply()
    assert refused["reason"] == "TokenWrongRoom"
    assert await stray.close_code_from_server() == 4401
    as_guest = await guest(chat, "Teach", path="/class-7b")
    reply = await moderate(as_guest, "slow", seconds=5)
    assert (reply["reason"], reply["action"]) == ("NotModerator", "slow")
    helper = await client(chat, path="/class-7b")
    auth = await helper.request({"type": "auth", "token": encoded})
    assert auth["reason"] == "TokenWrongRoom"

    teacher = await moderator(chat, path="/class-7a", rooms=["class-7a"])
    pupil = await guest(chat, "pupil", path="/class-7a")
    elsewhere = await guest(chat, "pupil", path="/class-7b")
    assert (await moderate(teacher, "slow", seconds=5))["status"] is True
    assert chat.factory.moderation.slow_mode("class-7a") == 5
    assert chat.factory.moderation.slow_mode("class-7b") == 0
    assert (await moderate(teacher, "kick", name="pupil"))["status"] is True
    assert await pupil.close_code_from_server() == 4001
    await until(lambda: chat.factory.rooms.registered_count() == 3)
    assert (await moderate(teacher, "kick", name="pupil"))["reason"] == "NoSuchUser"
    assert (await elsewhere.say("still here"))["status"] is True


@pytest_twisted.ensureDeferred
async def test_not_moderators(chat):
    pupil = await guest(chat, "pupil")
    unregistered = await client(chat)
    assert await unregistered.request({"type": "moderate", "action": "kick"}) == {
        "type": "moderate",
        "status": False,
        "reason": "UnknownRegister",
    }
    refused = await moderate(pupil, "kick", name="someone")
    assert refused == {
        "type": "moderate",
        "action": "kick",
        "status": False,
        "reason": "NotModerator",
        "error": "only a moderator can do this",
    }
    plain = await verified(chat, "Verified", roles=["teacher"])
    assert (await moderate(plain, "slow", seconds=5))["reason"] == "NotModerator"
    # Within the leeway its token was still accepted; as a moderator it
    # has expired.
    expired = await verified(chat, "Old", roles=["moderator"], expires_in=-30)
    reply = await moderate(expired, "slow", seconds=5)
    assert reply["reason"] == "NotModerator" and "expired" in reply["error"]
    assert chat.factory.moderation.slow_mode("") == 0


@pytest.mark.parametrize(
    "request_fields, field",
    [
        ({"action": "fly"}, "action"),
        ({}, "action"),
        ({"action": "delete"}, "ids"),
        ({"action": "delete", "ids": []}, "ids"),
        ({"action": "delete", "ids": list(range(1, 102))}, "ids"),
        ({"action": "delete", "ids": [0]}, "ids"),
        ({"action": "delete", "ids": [True]}, "ids"),
        ({"action": "delete", "ids": ["1"]}, "ids"),
        ({"action": "delete", "ids": [1], "reason": 5}, "reason"),
        ({"action": "kick"}, "name"),
        ({"action": "kick", "name": ""}, "name"),
        ({"action": "kick", "name": "x" * 101}, "name"),
        ({"action": "kick", "name": "pupil", "reason": "r" * 501}, "reason"),
        ({"action": "mute", "name": "pupil"}, "seconds"),
        ({"action": "mute", "name": "pupil", "seconds": 0}, "seconds"),
        ({"action": "mute", "name": "pupil", "seconds": 604_801}, "seconds"),
        ({"action": "mute", "name": "pupil", "seconds": "60"}, "seconds"),
        ({"action": "mute", "name": "pupil", "seconds": True}, "seconds"),
        ({"action": "unmute"}, "name"),
        ({"action": "slow"}, "seconds"),
        ({"action": "slow", "seconds": -1}, "seconds"),
        ({"action": "slow", "seconds": 24 * 3600 + 1}, "seconds"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_wrong_fields(chat, request_fields, field):
    teacher = await moderator(chat)
    reply = await teacher.request({"type": "moderate", **request_fields})
    assert reply == {
        "type": "moderate",
        "action": request_fields.get("action"),
        "status": False,
        "reason": "WrongFormatArgument",
        "field": field,
    }


@pytest_twisted.ensureDeferred
async def test_a_moderator_may_not_act_on_itself_another_moderator_or_the_announcer(
    chat,
):
    teacher = await moderator(chat)
    aide = await moderator(chat, "Aide")
    pupil = await guest(chat, "pupil")
    for action, extra in (("kick", {}), ("mute", {"seconds": 60})):
        for target in ("teacher", "AIDE", "chatbox", "ChatBox"):
            reply = await moderate(teacher, action, name=target, **extra)
            assert (reply["status"], reply["reason"]) == (False, "Refused"), (
                action,
                target,
                reply,
            )
            assert isinstance(reply["error"], str)
    # A verified user who is not a moderator is fair game.
    plain = await verified(chat, "Verified")
    assert (await moderate(aide, "mute", name="Verified", seconds=60))["status"] is True
    assert (await moderate(aide, "kick", name="pupil"))["status"] is True
    assert plain is not None and pupil is not None


@pytest_twisted.ensureDeferred
async def test_a_moderator_mutes_only_who_is_here_and_a_share_of_the_rules(
    chat, monkeypatch
):
    # The rules hold 10,000 bans and mutes for the whole server: a room's
    # moderator must not be able to fill them with names nobody holds
    # (attacker review), leaving the operator unable to ban anyone.
    monkeypatch.setattr(moderation, "MAX_ROOM_MODERATOR_MUTES", 3)
    teacher = await moderator(chat)
    nobody = await moderate(teacher, "mute", name="nobody 1", seconds=600)
    assert (nobody["status"], nobody["reason"]) == (False, "NoSuchUser")
    pupils = [await guest(chat, f"pupil {i}") for i in range(4)]
    for i in range(3):
        reply = await moderate(teacher, "mute", name=f"pupil {i}", seconds=600)
        assert reply["status"] is True, reply
    full = await moderate(teacher, "mute", name="pupil 3", seconds=600)
    assert (full["status"], full["reason"]) == (False, "Refused")
    assert "3 mutes in force" in full["error"]
    # Lifting one gives its share back.
    assert (await moderate(teacher, "unmute", name="pupil 0"))["status"] is True
    again = await moderate(teacher, "mute", name="pupil 3", seconds=600)
    assert again["status"] is True
    assert len(pupils) == 4


@pytest_twisted.ensureDeferred
async def test_moderators_act_in_a_named_room(chat):
    teacher = await moderator(chat, path="/class-7a", rooms=["class-7a"])
    pupil = await guest(chat, "pupil", path="/class-7a")
    outside = await guest(chat, "pupil", path="/class-7b")
    await teacher.event()
    with Log() as log:
        reply = await moderate(teacher, "kick", name="pupil")
    assert reply["status"] is True
    assert await pupil.close_code_from_server() == 4001
    assert (await outside.say("still here"))["status"] is True
    assert any(
        re.search(r"kick 'pupil' in room class-7a", line) for line in audit_lines(log)
    )


@pytest_twisted.ensureDeferred
async def test_slow_mode_on_and_off_is_told_to_everyone_in_the_room(chat):
    """A room's students learn that slow mode began or ended (a client held
    by it stops counting down at once when it ends): every registered
    connection of the room, whether a moderator or the operator set it, and
    nobody outside the room nor anyone not joined yet."""
    teacher = await moderator(chat, path="/class-7a", rooms=["class-7a"])
    pupil = await guest(chat, "pupil", path="/class-7a")
    await teacher.event()  # pupil joined
    lurker = await client(chat, path="/class-7a")  # not registered
    elsewhere = await guest(chat, "pupil", path="/class-7b")
    marker = await guest(chat, "marker", path="/class-7b")
    await elsewhere.event()  # marker joined
    before = time.time() * 1000
    assert (await moderate(teacher, "slow", seconds=30))["status"] is True
    assert (await pupil.say("one"))["status"] is True
    held = await pupil.say("two")
    assert held["reason"] == "SlowMode"
    assert (await moderate(teacher, "slow", seconds=0))["status"] is True
    await moderator_of(chat).set_slow_mode("ops", "class-7a", 2.5)
    for user in (pupil, teacher):
        told = []
        while len(told) < 3:
            event = await user.event()
            if event["datatype"] != "message":
                told.append(event)
        assert [e.get("seconds") for e in told] == [30, 0, 2.5], told
        for event in told:
            assert set(event) == {"type", "datatype", "seconds", "timestamp", "time"}
            assert (event["type"], event["datatype"]) == ("receive", "slowmode")
            assert isinstance(event["timestamp"], str)
            assert before - 1000 <= event["time"] <= time.time() * 1000 + 1000
    # As the server says: a send goes through now that the wait is shorter.
    await sleep(2.5)
    assert (await pupil.say("three"))["status"] is True
    # Nothing reached the other room, nor the connection without a name.
    await no_events_before([elsewhere], marker)
    assert (await lurker.get())["reason"] == "UnknownRegister"
    assert not [m for m in lurker.raw if m.get("type") == "receive"], lurker.raw
