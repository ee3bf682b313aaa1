"""Verified nicknames as rules (chatbox.chat.moderation, issue 15), without
I/O: the `verify` and `unverify` orders, and `name_refusal` for guests and
for connections holding a token."""

import pytest

from chatbox.auth.identity import Identity
from chatbox.chat.moderation import (
    MAX_VERIFIED,
    Moderation,
    OrderError,
    Sanction,
)

NOW = 1_800_000_000_000
LAN = "Ms Lan"
# The same nickname for ARNS: case, a Cyrillic а, fullwidth letters, spacing.
LOOK_ALIKES = ("Ms Lan", "Ms Lаn", "MS LAN", "ms lan", "Ｍｓ Ｌａｎ", "  Ms   Lan ")
OTHERS = ("Ms Lam", "Ms Lana", "Mr Lan", "Lan")


def verify(rules, name=LAN, rooms=None, by="ops", at=NOW):
    return rules.apply(
        {"op": "verify", "name": name, "rooms": rooms, "by": by, "at": at}
    )


def identity(name=LAN, rooms=None):
    return Identity(name, NOW + 3_600_000, rooms)


def test_a_guest_cannot_take_a_verified_nickname_nor_a_look_alike():
    rules = Moderation()
    verify(rules)
    for name in LOOK_ALIKES:
        assert rules.name_refusal(name, "", NOW) == "verified", name
        assert rules.name_refusal(name, "class-7a", NOW) == "verified", name
    for name in OTHERS:
        assert rules.name_refusal(name, "", NOW) is None, name


# Its own spelling, give or take case, width and spacing; never letters that
# only look alike.
SPELLINGS = ("Ms Lan", "MS LAN", "ms lan", "Ｍｓ Ｌａｎ", "  Ms   Lan ")


def test_the_token_holder_takes_its_nickname_in_any_spelling_and_nothing_else():
    rules = Moderation()
    verify(rules)
    for name in SPELLINGS:
        assert rules.name_refusal(name, "", NOW, identity()) is None, name
    for name in (*OTHERS, "Ms Lаn"):  # a Cyrillic а
        assert rules.name_refusal(name, "", NOW, identity()) == "token", name
    # Not yet verified (a token shown for the first time): the same.
    fresh = Moderation()
    assert fresh.name_refusal("MS LAN", "", NOW, identity()) is None
    assert fresh.name_refusal("Alice", "", NOW, identity()) == "token"


def test_a_token_for_a_look_alike_spelling_cannot_take_a_verified_nickname():
    # `Ian` and `Lan` share an ARNS key (capital I looks like small l), but
    # a token for one is not a token for the other.
    rules = Moderation()
    verify(rules, "Lan")
    ian = identity("Ian")
    assert rules.name_refusal("Lan", "", NOW, ian) == "token"
    assert rules.name_refusal("Ian", "", NOW, ian) == "verified"
    assert rules.name_refusal("Lan", "", NOW, identity("Lan")) is None
    assert rules.look_alike("Ian").name == "Lan"
    assert rules.look_alike("LAN") is None
    # Verified the other way round, the same.
    rules = Moderation()
    verify(rules, "Ms Ian")
    assert rules.name_refusal("Ms lan", "", NOW, identity("Ms Ian")) == "token"
    assert rules.name_refusal("Ms lan", "", NOW) == "verified"
    # (`Ms Ian` and `Ms Lan` themselves share no key: only `Ms lan` bridges.)
    assert rules.name_refusal("Ms Lan", "", NOW, identity("Ms Lan")) is None


def test_reserved_patterns_hold_off_guests_but_not_the_token_holder():
    rules = Moderation()
    rules.apply({"op": "reserve", "pattern": "ms *"})
    assert rules.name_refusal(LAN, "", NOW) == "reserved"
    assert rules.name_refusal(LAN, "", NOW, identity()) is None


def test_a_ban_holds_off_the_token_holder_too():
    rules = Moderation()
    verify(rules)
    ban = Sanction.new("ban", "name", "ms lan", "x", "ops", NOW, None, "class-7a")
    rules.apply({"op": "sanction", "sanction": ban.to_dict()})
    assert rules.name_refusal(LAN, "class-7a", NOW, identity()) == "banned"
    assert rules.name_refusal(LAN, "class-7b", NOW, identity()) is None
    assert rules.name_refusal(LAN, "class-7a", NOW) == "banned"


@pytest.mark.parametrize("name", ["chatbox", "ChatBox", "сhatbox", "ＣＨＡＴＢＯＸ"])
def test_the_announcer_can_never_be_verified_nor_taken_with_a_token(name):
    rules = Moderation(announcer="chatbox")
    with pytest.raises(OrderError):
        verify(rules, name)
    assert rules.verified() == []
    assert rules.name_refusal(name, "", NOW, identity(name)) == "reserved"


def test_protection_covers_only_its_rooms_and_later_tokens_widen_it():
    rules = Moderation()
    verify(rules, rooms=["class-7a"])
    assert rules.name_refusal("ms lan", "class-7a", NOW) == "verified"
    for room in ("", "class-7b", None):
        assert rules.name_refusal("ms lan", room, NOW) is None, room
    assert rules.protection("MS LAN") == ["class-7a"]
    verify(rules, "MS LAN", rooms=["", "class-7b"], by="later", at=NOW + 1)
    assert rules.protection(LAN) == ["", "class-7a", "class-7b"]
    assert rules.name_refusal("ms lan", "", NOW) == "verified"
    # A narrower token later never narrows it, nor changes who made it.
    verify(rules, rooms=["class-7a"], by="narrower", at=NOW + 2)
    assert rules.verified() == [
        {
            "name": LAN,
            "rooms": ["", "class-7a", "class-7b"],
            "by": "later",
            "at": NOW + 1,
        }
    ]
    verify(rules, rooms=None, by="everywhere", at=NOW + 3)
    assert rules.protection(LAN) is None
    assert rules.name_refusal("ms lan", "class-9z", NOW) == "verified"
    verify(rules, rooms=["class-7a"])
    assert rules.protection(LAN) is None


def test_unverify_frees_the_nickname_by_any_spelling():
    rules = Moderation()
    verify(rules)
    verify(rules, "Bob", rooms=["class-7a"])
    rules.apply({"op": "unverify", "name": "ＭＳ ＬＡＮ", "by": "ops"})
    assert rules.protection(LAN) is False
    for name in LOOK_ALIKES:
        assert rules.name_refusal(name, "", NOW) is None, name
    assert [p["name"] for p in rules.verified()] == ["Bob"]
    rules.apply({"op": "unverify", "name": "nobody", "by": "ops"})  # harmless
    assert rules.name_refusal("bob", "class-7a", NOW) == "verified"


def test_ten_thousand_verified_nicknames_and_no_more():
    rules = Moderation()
    for n in range(MAX_VERIFIED):
        verify(rules, f"teacher {n}", rooms=[f"class-{n % 50}"])
    assert len(rules.verified()) == MAX_VERIFIED
    before = rules.snapshot()
    with pytest.raises(OrderError):
        verify(rules, "one too many")
    assert rules.snapshot() == before
    assert rules.name_refusal("one too many", "", NOW) is None
    # Widening one already verified is no new name.
    verify(rules, "TEACHER 7", rooms=None)
    assert rules.protection("teacher 7") is None
    assert rules.name_refusal("Teacher 9999", "class-49", NOW) == "verified"
    assert rules.name_refusal("Teacher 9999", "class-48", NOW) is None
    copy = Moderation()
    copy.restore(rules.snapshot())
    assert copy.snapshot() == rules.snapshot()


def test_verified_nicknames_survive_a_snapshot():
    rules = Moderation()
    verify(rules, rooms=["class-7a", ""])
    verify(rules, "Bob")
    ban = Sanction.new("ban", "name", "troll", "x", "ops", NOW, None, None)
    rules.apply({"op": "sanction", "sanction": ban.to_dict()})
    snapshot = rules.snapshot()
    assert snapshot["verified"] == [
        {"name": LAN, "rooms": ["", "class-7a"], "by": "ops", "at": NOW},
        {"name": "Bob", "rooms": None, "by": "ops", "at": NOW},
    ]
    copy = Moderation()
    copy.restore(snapshot)
    assert copy.snapshot() == snapshot
    assert copy.name_refusal("ms lаn", "class-7a", NOW) == "verified"
    assert copy.name_refusal("BOB", "anywhere", NOW) == "verified"
    assert copy.name_refusal("troll", "", NOW) == "banned"


def test_a_snapshot_from_before_verified_nicknames_still_loads():
    older = {"sanctions": [], "reserved": ["teacher*"], "slow": {"": 5}}
    rules = Moderation()
    rules.restore(older)
    assert rules.verified() == []
    assert rules.snapshot() == older | {"verified": []}


@pytest.mark.parametrize(
    "verified",
    [
        {"name": LAN},
        [{"name": LAN, "rooms": None, "by": "ops"}],
        [{"name": "", "rooms": None, "by": "ops", "at": NOW}],
        [{"name": LAN, "rooms": "class-7a", "by": "ops", "at": NOW}],
        ["Ms Lan"],
    ],
)
def test_a_snapshot_with_unreadable_verified_nicknames_replaces_nothing(verified):
    rules = Moderation()
    verify(rules, "Bob")
    before = rules.snapshot()
    with pytest.raises(OrderError):
        rules.restore({"verified": verified})
    assert rules.snapshot() == before


@pytest.mark.parametrize(
    "change",
    [
        {"name": ""},
        {"name": "a\nb"},
        {"name": 7},
        {"rooms": []},
        {"rooms": "class-7a"},
        {"rooms": ["Class-7A"]},  # not in canonical form
        {"rooms": ["admin"]},  # reserved by the server
        {"rooms": [7]},
        {"rooms": ["/"]},
        {"rooms": [f"r{n}" for n in range(1001)]},
        {"by": None},
        {"at": "now"},
        {"at": 1.5},
    ],
)
def test_a_verify_order_no_operator_could_make_changes_nothing(change):
    rules = Moderation()
    verify(rules, "Bob")
    before = rules.snapshot()
    order = {"op": "verify", "name": LAN, "rooms": None, "by": "ops", "at": NOW}
    with pytest.raises(OrderError):
        rules.apply(order | change)
    with pytest.raises(OrderError):
        rules.apply({"op": "unverify", "name": change.get("name", 7)})
    assert rules.snapshot() == before


def test_look_alikes_in_different_ways_are_each_protected_and_freed_together():
    """`Ivan` and `lvan` (small L) share one ARNS key, not the other:
    verified both, a name either covers is held, and unverifying one
    spelling frees whatever it falls under."""
    rules = Moderation()
    verify(rules, "Ivan", rooms=["a"])
    verify(rules, "lvan", rooms=["b"])
    assert len(rules.verified()) == 2
    assert rules.protection("lvan") == ["a", "b"]
    rules.apply({"op": "unverify", "name": "lvan", "by": "ops"})
    assert rules.verified() == []
    assert rules.protection("Ivan") is False


def test_the_listing_is_by_name():
    rules = Moderation()
    for name in ("carol", "Bob", "alice"):
        verify(rules, name)
    assert [p["name"] for p in rules.verified()] == ["alice", "Bob", "carol"]
