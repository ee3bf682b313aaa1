"""The operator's rules (chatbox.chat.moderation), without I/O."""

import pytest

from chatbox.chat.moderation import (
    MAX_SANCTIONS,
    Moderation,
    OrderError,
    Sanction,
    SlowMode,
    network_of,
)

NOW = 1_800_000_000_000


def sanction(
    kind="ban", target="name", value="Admin", room=None, expires=None, by="ops"
):
    return Sanction.new(kind, target, value, "spam", by, NOW, expires, room)


def add(rules, made):
    rules.apply({"op": "sanction", "sanction": made.to_dict()})
    return made


def test_a_name_ban_covers_look_alikes_and_other_cases():
    rules = Moderation()
    add(rules, sanction(value="Admin"))
    for name in (
        "Admin",
        "admin",
        "ADMIN",
        "аdmin",
        "Ａdmin",
        "ad\u200bmin",
        " admin ",
    ):
        assert rules.name_refusal(name, "", NOW) == "banned", name
    assert rules.name_refusal("Admins", "", NOW) is None
    assert rules.name_refusal("Alice", "", NOW) is None


def test_a_ban_in_one_room_leaves_the_others():
    rules = Moderation()
    add(rules, sanction(room="class-7a"))
    assert rules.name_refusal("admin", "class-7a", NOW) == "banned"
    assert rules.name_refusal("admin", "", NOW) is None
    assert rules.name_refusal("admin", "class-7b", NOW) is None


def test_sanctions_end_when_they_expire_and_are_pruned():
    rules = Moderation()
    made = add(rules, sanction(expires=NOW + 1000))
    assert rules.banned("admin", None, "", NOW + 999) == made
    assert rules.banned("admin", None, "", NOW + 1000) is None
    assert rules.sanctions("ban", NOW + 1000) == []
    assert rules.prune(NOW + 1000) == 1
    assert rules.get(made.id) is None


def test_the_longest_sanction_is_the_one_reported():
    rules = Moderation()
    add(rules, sanction(expires=NOW + 1000))
    forever = add(rules, sanction(value="ADMIN"))
    assert rules.banned("admin", None, "", NOW) == forever


def test_lifting_a_sanction_removes_it_from_every_index():
    rules = Moderation()
    made = add(rules, sanction())
    address = add(rules, sanction(target="address", value="10.0.0.0/24"))
    assert rules.apply({"op": "lift", "id": made.id}) == made
    assert rules.apply({"op": "lift", "id": address.id}) == address
    assert rules.name_refusal("admin", "", NOW) is None
    assert rules.on_address("ban", "10.0.0.7", None, NOW) is None
    assert rules.apply({"op": "lift", "id": made.id}) is None


@pytest.mark.parametrize(
    ("value", "inside", "outside"),
    [
        ("192.0.2.7", ["192.0.2.7", "::ffff:192.0.2.7"], ["192.0.2.8", "::1"]),
        ("192.0.2.0/24", ["192.0.2.0", "192.0.2.255"], ["192.0.3.1"]),
        ("2001:db8::1", ["2001:db8::1"], ["2001:db8::2", "192.0.2.1"]),
        ("2001:db8::/48", ["2001:db8:0:ffff::9"], ["2001:db9::1"]),
        ("::ffff:192.0.2.7", ["192.0.2.7"], ["192.0.2.6"]),
    ],
)
def test_address_bans_match_addresses_and_networks(value, inside, outside):
    rules = Moderation()
    add(rules, sanction(target="address", value=value))
    for address in inside:
        assert rules.on_address("ban", address, None, NOW) is not None, address
    for address in outside:
        assert rules.on_address("ban", address, None, NOW) is None, address
    assert rules.on_address("ban", "not an address", None, NOW) is None


def test_a_server_wide_question_ignores_bans_in_one_room():
    rules = Moderation()
    add(rules, sanction(target="address", value="192.0.2.7", room="class-7a"))
    assert rules.on_address("ban", "192.0.2.7", None, NOW) is None
    assert rules.on_address("ban", "192.0.2.7", "class-7a", NOW) is not None


def test_mutes_are_not_bans():
    rules = Moderation()
    add(rules, sanction(kind="mute", expires=NOW + 60_000))
    assert rules.name_refusal("admin", "", NOW) is None
    assert rules.muted("ADMIN", None, "", NOW) is not None
    assert rules.muted("alice", "192.0.2.1", "", NOW) is None
    add(rules, sanction(kind="mute", target="address", value="192.0.2.1"))
    assert rules.muted("alice", "192.0.2.1", "", NOW) is not None


def test_reserved_patterns_are_compared_by_skeleton():
    rules = Moderation()
    rules.apply({"op": "reserve", "pattern": "teacher*"})
    rules.apply({"op": "reserve", "pattern": "mod?"})
    for name in ("teacher", "Teacher Lan", "Τeacher", "TEACHER-2"):
        assert rules.name_refusal(name, "", NOW) == "reserved", name
    for name in ("mods", "MODS", "mоds"):  # Cyrillic о
        assert rules.name_refusal(name, "", NOW) == "reserved", name
    for name in ("the teacher", "mod", "moderator"):
        assert rules.name_refusal(name, "", NOW) is None, name
    rules.apply({"op": "unreserve", "pattern": "teacher*"})
    assert rules.name_refusal("teacher", "", NOW) is None


def test_the_announcer_name_is_always_reserved():
    rules = Moderation(announcer="chatbox")
    for name in ("chatbox", "ChatBox", "сhatbox"):  # Cyrillic с
        assert rules.name_refusal(name, "", NOW) == "reserved", name
    assert rules.name_refusal("chatbox fan", "", NOW) is None


@pytest.mark.parametrize("pattern", ["*", "?", "**?", "", "x" * 101])
def test_a_pattern_must_name_something(pattern):
    with pytest.raises(OrderError):
        Moderation().apply({"op": "reserve", "pattern": pattern})


@pytest.mark.parametrize(
    "order",
    [
        None,
        {},
        {"op": "explode"},
        {"op": "sanction"},
        {"op": "sanction", "sanction": {"id": "x"}},
        {"op": "slow", "room": "", "seconds": -1},
        {"op": "slow", "room": "", "seconds": "5"},
        {"op": "slow", "room": None, "seconds": 5},
    ],
)
def test_an_order_that_cannot_be_applied_changes_nothing(order):
    rules = Moderation()
    before = rules.snapshot()
    with pytest.raises(OrderError):
        rules.apply(order)
    assert rules.snapshot() == before


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "exile"},
        {"target": "soul"},
        {"value": ""},
        {"target": "address", "value": "999.0.0.1"},
        {"expires": "tomorrow"},
        {"reason": "x" * 501},
        {"room": 7},
    ],
)
def test_a_sanction_no_operator_could_make_is_refused(change):
    fields = sanction().to_dict() | change
    with pytest.raises(OrderError):
        Sanction.from_dict(fields)


def test_rules_survive_a_snapshot():
    rules = Moderation()
    add(rules, sanction())
    add(rules, sanction(kind="mute", target="address", value="2001:db8::/64"))
    rules.apply({"op": "reserve", "pattern": "teacher*"})
    rules.apply({"op": "slow", "room": "class-7a", "seconds": 30})
    copy = Moderation()
    copy.restore(rules.snapshot())
    assert copy.snapshot() == rules.snapshot()
    assert copy.name_refusal("аdmin", "", NOW) == "banned"
    assert copy.muted(None, "2001:db8::5", "", NOW) is not None
    assert copy.slow_mode("class-7a") == 30


def test_a_snapshot_that_cannot_be_read_replaces_nothing():
    rules = Moderation()
    add(rules, sanction())
    before = rules.snapshot()
    with pytest.raises(OrderError):
        rules.restore({"sanctions": [{"id": "half"}]})
    assert rules.snapshot() == before


def test_sanctions_are_capped():
    rules = Moderation()
    for n in range(MAX_SANCTIONS):
        add(rules, sanction(target="address", value=f"10.{n // 256}.{n % 256}.1"))
    with pytest.raises(OrderError):
        add(rules, sanction())


def test_network_of_reads_ipv4_mapped_networks_as_ipv4():
    assert str(network_of("::ffff:10.0.0.0/104")) == "10.0.0.0/8"
    with pytest.raises(OrderError):
        network_of("example.com")


def test_slow_mode_holds_a_person_however_they_rename():
    slow = SlowMode()
    assert slow.wait("", ("alice", "conn-1"), 100.0, 10) == 0
    assert slow.wait("", ("alice", "conn-2"), 101.0, 10) == pytest.approx(9)
    assert slow.wait("", ("bob", "conn-1"), 101.0, 10) == pytest.approx(9)
    assert slow.wait("", ("bob", "conn-3"), 101.0, 10) == 0
    assert slow.wait("other-room", ("alice", "conn-1"), 101.0, 10) == 0
    assert slow.wait("", ("alice", "conn-1"), 110.0, 10) == 0


def test_lifting_and_pruning_mutes_keeps_the_fast_path_right():
    rules = Moderation()
    first = add(rules, sanction(kind="mute", expires=NOW + 10))
    rules.apply({"op": "lift", "id": first.id})
    rules.apply({"op": "lift", "id": first.id})  # twice: counted once
    assert rules.muted("admin", None, "", NOW) is None
    add(rules, sanction(kind="mute", expires=NOW + 10))
    assert rules.muted("admin", None, "", NOW) is not None
    rules.prune(NOW + 10)
    add(rules, sanction(kind="mute", value="bob", expires=NOW + 100))
    assert rules.muted("bob", None, "", NOW + 20) is not None


def test_the_same_target_is_found_through_the_indexes():
    rules = Moderation()
    name = add(rules, sanction(value="Troll"))
    exact = add(rules, sanction(target="address", value="192.0.2.7"))
    network = add(rules, sanction(target="address", value="192.0.2.0/24"))
    here = add(rules, sanction(target="address", value="192.0.2.7", room="a"))
    assert rules.same("ban", "name", "Troll", None) == [name]
    assert rules.same("ban", "name", "troll", None) == []  # as typed, not by look
    assert rules.same("ban", "address", "192.0.2.7", None) == [exact]
    assert rules.same("ban", "address", "192.0.2.7", "a") == [here]
    assert rules.same("ban", "address", "192.0.2.0/24", None) == [network]
    assert rules.same("mute", "address", "192.0.2.7", None) == []


def test_named_finds_a_names_sanctions_in_every_room_by_look():
    """What an in-chat moderator's `unmute` picks its room's mutes from."""
    rules = Moderation()
    here = add(rules, sanction(kind="mute", value="Loud", room="a", expires=NOW + 9))
    alike = add(rules, sanction(kind="mute", value="LОUD", room="a"))  # Cyrillic О
    everywhere = add(rules, sanction(kind="mute", value="loud"))
    add(rules, sanction(kind="mute", value="loud", room="b", expires=NOW))  # over
    add(rules, sanction(kind="ban", value="loud"))
    add(rules, sanction(kind="mute", value="quiet"))
    found = rules.named("mute", "loud", NOW)
    assert {s.id for s in found} == {here.id, alike.id, everywhere.id}
    assert rules.named("mute", "nobody", NOW) == []


def test_the_same_rule_again_replaces_the_one_in_force_however_orders_raced():
    """Two moderators muting the same person at once each submit a new
    sanction: applying them leaves one (attacker review: duplicates piled
    up toward the caps, each to be lifted by hand)."""
    rules = Moderation()
    first = add(rules, sanction(kind="mute", value="Bob", room="a", by="moderator x"))
    second = add(rules, sanction(kind="mute", value="Bob", room="a", by="moderator y"))
    assert [s.id for s in rules.sanctions("mute", NOW)] == [second.id]
    assert first.id != second.id
    other_room = add(rules, sanction(kind="mute", value="Bob", room="b"))
    assert len(rules.sanctions("mute", NOW)) == 2 and other_room is not None


def test_moderators_mutes_have_a_share_of_the_rules(monkeypatch):
    from chatbox.chat import moderation

    monkeypatch.setattr(moderation, "MAX_ROOM_MODERATOR_MUTES", 2)
    monkeypatch.setattr(moderation, "MAX_MODERATOR_MUTES", 3)
    rules = Moderation()
    by = "moderator 'T' (secret)"
    for name in ("a1", "a2"):
        add(rules, sanction(kind="mute", value=name, room="a", by=by))
    with pytest.raises(OrderError, match="this room's moderators have 2"):
        add(rules, sanction(kind="mute", value="a3", room="a", by=by))
    # The same rule again is a replacement, not one more.
    add(rules, sanction(kind="mute", value="a2", room="a", by=by))
    add(rules, sanction(kind="mute", value="b1", room="b", by=by))
    with pytest.raises(OrderError, match="in all rooms"):
        add(rules, sanction(kind="mute", value="c1", room="c", by=by))
    # An operator's mutes and bans are not counted against moderators.
    add(rules, sanction(kind="mute", value="c1", room="c", by="alice"))
    add(rules, sanction(kind="ban", value="c2", room="c", by=by))
    # Lifting one gives its share back.
    (a1,) = [s for s in rules.sanctions("mute", NOW) if s.value == "a1"]
    rules.apply({"op": "lift", "id": a1.id, "by": "ops"})
    add(rules, sanction(kind="mute", value="a3", room="a", by=by))
