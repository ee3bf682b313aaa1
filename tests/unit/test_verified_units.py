"""The verified marker (issue 15) in both backends, without Redis or disk:
the Registry's verified holders, LocalRoom's events and pages, and the
cluster room's side of its scripts (arguments out, replies and stream
events in) over tests.unit.test_cluster_units' fake links."""

import pytest
from twisted.internet.testing import MemoryReactorClock

from chatbox.chat.arns import NameTaken, Registry
from chatbox.chat.room import Page
from chatbox.cluster import scripts
from chatbox.cluster.keys import Keys
from chatbox.local.room import LocalRoom
from chatbox.local.store import DurableStore
from chatbox.wire import messages
from tests.unit.test_cluster_units import LEFT, Node, T, _entry


def taken(call, *args) -> NameTaken:
    with pytest.raises(NameTaken) as refused:
        call(*args)
    return refused.value


# -- Registry ----------------------------------------------------------------


def test_the_registry_lists_verified_holders_in_online_order():
    registry = Registry()
    owners = [object() for _ in range(6)]
    for i, owner in enumerate(owners):
        registry.claim(owner, f"user{i}", verified=i % 2 == 0)
    assert registry.verified_online() == ["user0", "user2", "user4"]
    # A rename keeps its place; to a verified name it is listed, to an
    # unverified one it is not.
    registry.rename(owners[1], "Renamed1", verified=True)
    registry.rename(owners[2], "Renamed2", verified=False)
    assert registry.verified_online() == ["user0", "Renamed1", "user4"]
    assert registry.online() == [
        "user0", "Renamed1", "Renamed2", "user3", "user4", "user5",
    ]  # fmt: skip
    registry.release(owners[0])
    assert registry.verified_online() == ["Renamed1", "user4"]
    assert not registry.is_verified(owners[0])


def test_a_released_verified_owner_claims_again_as_it_is_now():
    registry = Registry()
    owner = object()
    registry.claim(owner, "Vy", verified=True)
    registry.release(owner)
    registry.claim(owner, "Vy")
    assert registry.verified_online() == []
    assert not registry.is_verified(owner)


def test_name_taken_says_whether_the_holder_is_verified():
    registry = Registry()
    guest, verified, newcomer = object(), object(), object()
    registry.claim(guest, "Guest")
    registry.claim(verified, "Vy", verified=True)
    # Look-alikes share keys: the holder is found by any of them.
    assert taken(registry.claim, newcomer, "GUEST", True).verified is False
    assert taken(registry.claim, newcomer, "vy", True).verified is True
    assert taken(registry.claim, newcomer, "Ｖy").verified is True
    registry.claim(newcomer, "New")
    assert taken(registry.rename, newcomer, "guest").verified is False
    assert taken(registry.rename, newcomer, "VY", True).verified is True
    # The exact own name: held by the renaming holder itself.
    assert taken(registry.rename, verified, "Vy", True).verified is True
    assert taken(registry.rename, guest, "Guest").verified is False
    # Nothing changed by the refusals.
    assert registry.verified_online() == ["Vy"]
    assert registry.online() == ["Guest", "Vy", "New"]


# -- LocalRoom -----------------------------------------------------------------


def local_room(tmp_path) -> tuple[LocalRoom, list]:
    clock = MemoryReactorClock()
    room = LocalRoom(DurableStore(str(tmp_path / "data.json"), clock), clock.seconds)
    delivered: list = []
    room.attach(lambda event, exclude: delivered.append((event, exclude)), print)
    return room, delivered


def test_local_events_and_pages_carry_the_verified_marker(tmp_path):
    room, delivered = local_room(tmp_path)
    an, vy, guest = object(), object(), object()
    room.claim(an, "An", T)
    room.claim(vy, "Vy", T, verified=True)
    room.rename(an, "Anh", LEFT, verified=True)
    assert delivered == [
        (messages.joined("An", T), an),
        (messages.joined("Vy", T, verified=True), vy),
        (messages.renamed("An", "Anh", LEFT, verified=True), an),
    ]
    assert delivered[1][0]["verified"] is True
    assert "verified" not in delivered[0][0]  # never `false`
    page = room.page(10, None, None).result
    assert page == Page([], ["Anh", "Vy"], ["Anh", "Vy"])
    refused = room.claim(guest, "vY", T, verified=True)
    assert refused.result.value.verified is True
    refused.addErrback(lambda _: None)
    room.rename(vy, "Vy2", LEFT)  # no longer verified
    room.release(an, LEFT)
    assert room.page(10, None, None).result == Page([], ["Vy2"], [])


# -- the cluster room ----------------------------------------------------------


def test_claims_and_renames_tell_redis_whether_verified():
    node = Node()
    vy, guest = object(), object()
    node.room.claim(vy, "Vy", T, verified=True)
    args, reply = node.commands_link.pending(scripts.CLAIM)
    assert args[-1] == "1" and args[-2] == ""  # verified; the default room
    reply.callback(b"1-0")
    node.room.claim(guest, "Guest", T)
    args, reply = node.commands_link.pending(scripts.CLAIM)
    assert args[-1] == "0"
    reply.callback(b"2-0")
    node.room.rename(guest, "Guest2", T, verified=True)
    args, reply = node.commands_link.pending(scripts.RENAME)
    assert args[-1] == "1"
    reply.callback(b"3-0")
    node.room.rename(vy, "Vy2", T)
    assert node.commands_link.pending(scripts.RENAME)[0][-1] == "0"


@pytest.mark.parametrize(("answer", "verified"), [(0, False), (-2, True)])
def test_a_taken_name_says_whether_its_holder_is_verified(answer, verified):
    node = Node()
    an = object()
    claimed = node.room.claim(an, "An", T, verified=True)
    node.commands_link.pending(scripts.CLAIM)[1].callback(answer)
    failure = claimed.result
    claimed.addErrback(lambda _: None)
    assert failure.check(NameTaken) and failure.value.verified is verified
    # A rename is answered alike.
    node.room.claim(an, "Bo", T)
    node.commands_link.pending(scripts.CLAIM)[1].callback(b"1-0")
    renamed = node.room.rename(an, "An", T)
    node.commands_link.pending(scripts.RENAME)[1].callback(answer)
    failure = renamed.result
    renamed.addErrback(lambda _: None)
    assert failure.check(NameTaken) and failure.value.verified is verified


def test_a_lost_name_is_not_a_taken_one():
    node = Node()
    an = object()
    node.room.claim(an, "An", T)
    node.commands_link.pending(scripts.CLAIM)[1].callback(b"1-0")
    renamed = node.room.rename(an, "Bo", T, verified=True)
    node.commands_link.pending(scripts.RENAME)[1].callback(-1)
    failure = renamed.result
    renamed.addErrback(lambda _: None)
    assert not failure.check(NameTaken)


def test_verified_events_from_the_stream_and_an_older_nodes_without():
    node = Node()
    ms = str(T.millis)
    node.reader_link.stream(
        _entry(b"1-0", k="register", o="n2:1", n="Vy", t=T.text, ms=ms, v="1"),
        # A node from before verified nicknames writes no `v`.
        _entry(b"2-0", k="register", o="n3:1", n="Old", t=T.text, ms=ms),
        _entry(b"3-0", k="change", o="n2:1", old="Vy", n="Vy2", t=T.text, ms=ms,
               v="1"),
        _entry(b"4-0", k="change", o="n3:1", old="Old", n="Old2", t=T.text, ms=ms),
        _entry(b"5-0", k="message", o="n2:1", n="Vy2", c="hi", t=T.text, ms=ms,
               id="7", a="v"),
        _entry(b"6-0", k="message", o="", n="chatbox", c="news", t=T.text, ms=ms,
               id="8", a="1"),
        _entry(b"7-0", k="message", o="n3:1", n="Old2", c="yo", t=T.text, ms=ms,
               id="9"),
        # A mark a newer node may add some day: an ordinary message here.
        _entry(b"8-0", k="message", o="n4:1", n="Nu", c="?", t=T.text, ms=ms,
               id="10", a="z"),
    )  # fmt: skip
    assert [event for event, _ in node.delivered] == [
        messages.joined("Vy", T, verified=True),
        messages.joined("Old", T),
        messages.renamed("Vy", "Vy2", T, verified=True),
        messages.renamed("Old", "Old2", T),
        messages.posted("Vy2", "hi", T, 7, "verified"),
        messages.posted("chatbox", "news", T, 8, "announcement"),
        messages.posted("Old2", "yo", T, 9),
        messages.posted("Nu", "?", T, 10),
    ]


def test_a_verified_post_says_so_to_redis_and_in_its_entry():
    node = Node()
    an = object()
    node.room.claim(an, "An", T, verified=True)
    node.commands_link.pending(scripts.CLAIM)[1].callback(b"1-0")
    for mark, code in ((None, "0"), ("verified", "v")):
        node.room.post(an, "An", "hi", T, None, mark=mark)
        args, reply = node.commands_link.pending(scripts.POST)
        assert args[1] == "n1:1" and args[-1] == code
        assert (b'"verified":true' in args[7]) is (mark == "verified")
        reply.callback(5)


def test_the_page_lists_the_verified_names_redis_found():
    node = Node()
    paged = node.room.page(50, None, None, 0)
    args, reply = node.commands_link.pending(scripts.PAGE)
    assert args[4] == "1"  # the first slice: it lists who is online
    reply.callback([[], 0, [b"An", b"Vy", b"Bo"], [b"Vy"]])
    assert paged.result == Page([], ["An", "Vy", "Bo"], ["Vy"])


def test_the_verified_holders_are_a_room_key_of_their_own():
    default, named = Keys.under(), Keys.for_room("class-7a")
    assert default.verified == "chatbox:verified"
    assert named.verified == "chatbox:room:class-7a:verified"
    # After the keys of before, so each keeps its place in the scripts' KEYS
    # (the purge lease came after it, for the same reason).
    assert Keys._fields.index("verified") == 19
    assert b"KEYS[20]" in scripts.CLAIM
