"""Verified nicknames and moderators across a cluster: two real
`twistd -n chatbox --redis ...` nodes over a real redis-server, both with
--auth optional and the same secret (tests/test_cluster.py's start_node)."""

import signal
from pathlib import Path

import pytest_twisted

from tests.test_auth import SECRET, client, guest, sleep, token, verified
from tests.test_cluster import redis, start_node  # noqa: F401 (fixtures)


@pytest_twisted.async_yield_fixture
async def pair(tmp_path: Path, redis):  # noqa: F811
    secret = tmp_path / "auth-secret"
    secret.write_bytes(SECRET)
    args = ("--auth=optional", f"--auth-secret={secret}")
    started = [await start_node(tmp_path, redis, f"node{i}", *args) for i in (1, 2)]
    yield started
    for node in started:
        await node.kill(signal.SIGTERM)


async def refused_within(node_url: str, name: str, error: str, seconds: float = 10):
    """A guest on `node_url` asking for `name` until it is refused with
    `error` (protection travels as an order; it reaches every node soon,
    not at once). Returns how many asks it took."""
    impostor = await client(node_url)
    for attempt in range(int(seconds / 0.05)):
        reply = await impostor.register(name)
        if reply["status"] is False and reply.get("error") == error:
            impostor.sendClose()
            return attempt + 1
        if reply["status"] is True:
            impostor.sendClose()
            impostor = await client(node_url)
        await sleep(0.05)
    raise AssertionError(f"{name!r} was never refused with {error!r}")


@pytest_twisted.ensureDeferred
async def test_a_verified_user_on_one_node_is_protected_on_the_other(pair):
    a, b = pair
    teacher = await verified(a.url, "Teacher")
    # Online: B's guest is refused as for any protected name.
    await refused_within(b.url, "teacher", "verified")
    await refused_within(b.url, "Tеacher", "verified")  # Cyrillic е
    teacher.sendClose()
    await teacher.wait_closed()
    # Offline: still refused, on both nodes.
    await refused_within(b.url, "TEACHER", "verified", seconds=1)
    await refused_within(a.url, "Teacher", "verified", seconds=1)
    # The token's holder takes it on B.
    again = await verified(b.url, "Teacher")
    assert again is not None


@pytest_twisted.ensureDeferred
async def test_a_guest_on_one_node_is_kicked_for_a_verified_user_on_the_other(pair):
    a, b = pair
    squatter = await guest(b.url, "Teacher")
    watcher = await guest(a.url, "watcher")
    teacher = await client(a.url, token("Teacher"))
    assert (await teacher.reply())["status"] is True
    reply = await teacher.register("Teacher")
    assert reply["status"] is True and reply["verified"] is True
    notice = await squatter.reply()
    assert (notice["action"], notice["reason"]) == (
        "kick",
        "this nickname belongs to a verified user",
    )
    assert await squatter.close_code_from_server() == 4001
    events = []
    while not events or events[-1]["datatype"] != "register":
        events.append(await watcher.event())
    assert events[-1]["name"] == "Teacher" and events[-1]["verified"] is True


@pytest_twisted.ensureDeferred
async def test_a_moderator_on_one_node_acts_on_a_user_on_the_other(pair):
    a, b = pair
    teacher = await verified(a.url, "Teacher", roles=["moderator"])
    pupil = await guest(b.url, "pupil")
    other = await guest(b.url, "other")
    muted = await teacher.request(
        {"type": "moderate", "action": "mute", "name": "pupil", "seconds": 60}
    )
    assert muted["status"] is True, muted
    notice = await pupil.reply()
    assert (notice["type"], notice["action"]) == ("moderation", "mute")
    assert (await pupil.say("hi"))["reason"] == "Muted"
    unmuted = await teacher.request(
        {"type": "moderate", "action": "unmute", "name": "pupil"}
    )
    assert unmuted["status"] is True, unmuted
    assert (await pupil.reply())["action"] == "unmute"
    assert (await pupil.say("hi"))["status"] is True
    kicked = await teacher.request(
        {"type": "moderate", "action": "kick", "name": "PUPIL", "reason": "bye"}
    )
    assert kicked["status"] is True, kicked
    assert (await pupil.reply())["action"] == "kick"
    assert await pupil.close_code_from_server() == 4001
    said = await other.say("rude")
    deleted = await teacher.request(
        {"type": "moderate", "action": "delete", "ids": [said["id"]]}
    )
    assert deleted["ids"] == [said["id"]]
    while (event := await other.event())["datatype"] != "delete":
        pass
    assert event["ids"] == [said["id"]]
    # Nobody by that name anywhere in the room: NoSuchUser, on any node.
    gone = await teacher.request(
        {"type": "moderate", "action": "kick", "name": "nobody-here"}
    )
    assert gone["reason"] == "NoSuchUser"
    slow = await teacher.request({"type": "moderate", "action": "slow", "seconds": 30})
    assert slow["status"] is True
    # Node B tells its own connections of the room.
    while (event := await other.event())["datatype"] != "slowmode":
        pass
    assert event["seconds"] == 30
    # The order reaches B soon, not at once: B's sends go through until it.
    for attempt in range(100):
        reply = await other.say(f"message {attempt}")
        if reply["status"] is False:
            break
        await sleep(0.05)
    assert reply["reason"] == "SlowMode"
