"""Room names and the room registry (chatbox.chat.roomnames, chatbox.chat.rooms),
with a fake backend and a fake clock: every rule of loading, unloading and
the policy, without files or sockets."""

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from chatbox.chat.roomnames import DEFAULT, MAX_LENGTH, RESERVED, NotARoom, room_of_path
from chatbox.chat.rooms import IRoomMaker, RoomPolicy, RoomRefused, Rooms, Unloaded
from chatbox.web import CHILDREN

# -- names --


@pytest.mark.parametrize(
    ("path", "room"),
    [
        ("/", DEFAULT),
        ("/class-7a", "class-7a"),
        ("/Class-7A", "class-7a"),  # case folded
        ("/%63lass-7a", "class-7a"),  # percent-decoded once
        ("/class-7a/", "class-7a"),  # one trailing slash
        ("/a", "a"),
        ("/9b_x", "9b_x"),
        ("/" + "z" * MAX_LENGTH, "z" * MAX_LENGTH),
    ],
)
def test_a_path_names_one_room_however_it_is_spelled(path, room):
    assert room_of_path(path) == room


@pytest.mark.parametrize(
    "path",
    [
        "//",
        "/a/b",
        "/a//",
        "/%2Fa",  # an encoded slash is still a second segment
        "/" + "z" * (MAX_LENGTH + 1),
        "/-a",
        "/_a",
        "/a.b",
        "/..",
        "/lớp-7a",  # Unicode is refused, never normalised
        "/%E1%BB%9Bp",
        "/%C3",  # not UTF-8
        "/%2561",  # decoded once only: %61 is not a name
        "/a b",
        "/\u212a",  # the Kelvin sign does not fold to k
        "/healthz",
        "/Metrics",  # reserved in any case
        "/static/",
        "/rooms",
        "/admin",
    ],
)
def test_anything_else_is_not_a_room(path):
    with pytest.raises(NotARoom) as refused:
        room_of_path(path)
    assert str(refused.value)


def test_every_path_the_server_serves_is_reserved():
    assert {child.decode() for child in CHILDREN} <= RESERVED


# -- policy --


def test_the_default_policy_has_no_named_rooms():
    policy = RoomPolicy.from_options("", "", 1000)
    assert not policy.open and not policy.names and policy.most_rooms == 0


def test_a_fixed_list_from_a_comma_list_or_a_file(tmp_path):
    assert RoomPolicy.from_options(" Class-7A, b ,,", "", 5).names == {"class-7a", "b"}
    listing = tmp_path / "rooms.txt"
    listing.write_text("# classes\nclass-7a\n  class-7b  # Mr Minh\n\n")
    policy = RoomPolicy.from_options(str(listing), "class-7b", 5)
    assert policy.names == {"class-7a", "class-7b"}
    assert policy.listed == ("class-7b",)


@pytest.mark.parametrize(
    ("rooms", "listed", "words"),
    [
        ("a,b!", "", "'b!'"),
        ("a,healthz", "", "reserved"),
        ("a", "b", "--listed-rooms names rooms --rooms does not: b"),
        ("/nonexistent/rooms.txt", "", "cannot read"),
    ],
)
def test_a_bad_list_is_refused_with_its_reason(rooms, listed, words):
    with pytest.raises(ValueError, match=words):
        RoomPolicy.from_options(rooms, listed, 5)


# -- the registry --


class FakeRoom:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.messages = 0
        self.attached = False

    def attach(self, deliver, lost) -> None:
        self.attached = True

    def message_count(self) -> int:
        return self.messages

    def last_activity(self):
        return 1234 if self.messages else None

    def online_count(self):
        return succeed(2)

    def flush(self):
        return succeed(None)

    def close(self):
        self.closed = True
        return succeed(True)


@implementer(IRoomMaker)
class FakeMaker:
    def __init__(self, stored=None) -> None:
        self.loading: dict[str, Deferred] = {}
        self.made: list[str] = []
        self.unloaded: list[str] = []
        self.closing: Deferred | None = None  # set to hold an unload
        self._stored = stored or {}

    def stored(self):
        return dict(self._stored)

    def make(self, name):
        self.made.append(name)
        self.loading[name] = Deferred()
        return self.loading[name]

    def finish(self, name) -> FakeRoom:
        room = FakeRoom(name)
        self.loading.pop(name).callback(room)
        return room

    def unload(self, name, room):
        self.unloaded.append(name)
        room.close()
        kept = room.messages > 0
        if self.closing is not None:
            return self.closing.addCallback(lambda _: Unloaded(True, kept))
        return succeed(Unloaded(True, kept))

    def summary(self, name):
        return succeed((0, None))


def registry(policy: RoomPolicy, maker=None, idle=5.0):
    clock = Clock()
    maker = maker or FakeMaker()
    rooms = Rooms(FakeRoom(DEFAULT), maker, policy, clock, idle)
    rooms.attach(lambda name, room: room.attach(None, None))
    return rooms, maker, clock


def result(deferred: Deferred):
    found = []
    deferred.addBoth(found.append)
    assert found, "not fired"
    return found[0]


FIXED = RoomPolicy(names=frozenset({"a", "b"}), listed=("b",))


def test_only_listed_names_enter_a_fixed_policy():
    rooms, maker, _ = registry(FIXED)
    refused = result(rooms.enter("c")).value
    assert isinstance(refused, RoomRefused) and refused.status == 404
    assert result(rooms.enter(DEFAULT)) is rooms.default
    assert maker.made == []


def test_a_room_loads_once_for_everyone_who_arrives_while_it_loads():
    rooms, maker, _ = registry(FIXED)
    first, second = rooms.enter("a"), rooms.enter("a")
    assert maker.made == ["a"] and not first.called
    room = maker.finish("a")
    assert result(first) is room and result(second) is room and room.attached
    assert rooms.open_count() == 1 and rooms.loaded_count() == 2


def test_an_idle_room_unloads_after_the_idle_time_and_loads_again_on_return():
    rooms, maker, clock = registry(FIXED)
    entering = rooms.enter("a")
    room = maker.finish("a")
    result(entering)
    rooms.leave("a")
    clock.advance(4.9)
    assert not room.closed
    clock.advance(0.2)
    assert room.closed and rooms.loaded_count() == 1
    rooms.enter("a")
    assert maker.made == ["a", "a"]


def test_a_return_within_the_idle_time_keeps_the_room():
    rooms, maker, clock = registry(FIXED)
    rooms.enter("a")
    room = maker.finish("a")
    rooms.leave("a")
    clock.advance(4)
    assert result(rooms.enter("a")) is room
    clock.advance(10)
    assert not room.closed and maker.made == ["a"]


def test_someone_arriving_while_a_room_closes_waits_and_gets_it_reloaded():
    maker = FakeMaker()
    maker.closing = Deferred()
    rooms, _, clock = registry(FIXED, maker)
    rooms.enter("a")
    old = maker.finish("a")
    rooms.leave("a")
    clock.advance(5)
    arriving = rooms.enter("a")
    assert maker.made == ["a"], "no second owner of the files while one closes"
    maker.closing.callback(None)
    assert maker.made == ["a", "a"]
    new = maker.finish("a")
    assert result(arriving) is new is not old


def test_everyone_leaving_while_it_loads_still_unloads_it_later():
    rooms, maker, clock = registry(FIXED)
    entering = rooms.enter("a")
    rooms.leave("a")  # the connection gave up: the protocol leaves once loaded
    room = maker.finish("a")
    result(entering)
    clock.advance(5)
    assert room.closed and rooms.loaded_count() == 1


def test_the_default_room_is_never_unloaded():
    rooms, _, clock = registry(FIXED)
    rooms.enter(DEFAULT)
    rooms.leave(DEFAULT)
    clock.advance(1000)
    assert not rooms.default.closed


def test_a_room_that_fails_to_load_is_refused_for_a_while_without_reloading():
    rooms, maker, clock = registry(FIXED)
    entering = rooms.enter("a")
    maker.loading.pop("a").errback(OSError("/secret/path/a.json: damaged"))
    refused = result(entering).value
    assert refused.status == 503
    assert "/secret" not in str(refused), "no server path reaches a client"
    again = result(rooms.enter("a")).value
    assert again.status == 503 and maker.made == ["a"]
    clock.advance(11)
    rooms.enter("a")
    assert maker.made == ["a", "a"]


def test_open_rooms_stop_at_max_rooms_and_forgotten_empty_ones_make_space():
    policy = RoomPolicy(open=True, max_rooms=2)
    rooms, maker, clock = registry(policy, FakeMaker(stored={"old": 5}))
    rooms.enter("new")
    room = maker.finish("new")
    refused = result(rooms.enter("third")).value
    assert refused.status == 404 and "limit" in str(refused)
    entering = rooms.enter("old")  # a stored room still opens
    old = maker.finish("old")
    assert result(entering) is old
    rooms.leave("new")
    clock.advance(5)  # "new" never held a message: forgotten
    assert room.closed
    rooms.enter("third")
    assert maker.made[-1] == "third"


def test_the_listing_names_listed_rooms_only():
    rooms, maker, _ = registry(FIXED)
    rooms.enter("a")
    maker.finish("a")
    rooms.enter("b")
    maker.finish("b").messages = 3
    listed = result(rooms.listing())
    assert listed == [{"name": "b", "online": 2, "last_activity": 1234}]


def test_closing_waits_for_loads_and_closes_every_room():
    rooms, maker, _ = registry(FIXED)
    rooms.enter("a")
    a = maker.finish("a")
    rooms.enter("b")  # still loading when the server stops
    closing = rooms.close()
    assert not closing.called
    b = maker.finish("b")
    assert result(closing) is True
    assert a.closed and b.closed and rooms.default.closed
    assert result(rooms.enter("a")).value.status == 503


def test_a_connection_gone_while_its_room_loaded_starts_one_idle_timer():
    """The protocol leaves from its waiter's callback when its connection
    closed during the load; a second timer started after it would outlive
    a rejoin's cancel and unload the room under the one who rejoined."""
    rooms, maker, clock = registry(FIXED)
    rooms.enter("a").addCallback(lambda room: rooms.leave("a"))
    room = maker.finish("a")
    clock.advance(1)
    assert result(rooms.enter("a")) is room  # rejoined within the idle time
    clock.advance(100)
    assert not room.closed and rooms.loaded_count() == 2


def test_a_room_with_history_shows_its_activity_while_it_closes():
    maker = FakeMaker()
    maker.closing = Deferred()
    rooms, _, clock = registry(FIXED, maker)
    rooms.enter("b")
    maker.finish("b").messages = 3
    rooms.leave("b")
    clock.advance(5)  # closing, held
    listed = result(rooms.listing())
    assert listed == [{"name": "b", "online": 0, "last_activity": 1234}]


def test_a_room_nobody_wrote_in_goes_soon_one_with_history_waits():
    rooms, maker, clock = registry(FIXED, idle=60.0)
    rooms.enter("a")
    empty = maker.finish("a")
    rooms.enter("b")
    kept = maker.finish("b")
    kept.messages = 1
    rooms.leave("a")
    rooms.leave("b")
    clock.advance(5.1)
    assert empty.closed and not kept.closed
    clock.advance(60)
    assert kept.closed


def test_at_most_so_many_idle_rooms_stay_loaded_the_longest_idle_going_first():
    from chatbox.chat.rooms import IDLE_ROOMS_KEPT

    rooms, maker, clock = registry(RoomPolicy(open=True), idle=600.0)
    made = []
    for n in range(IDLE_ROOMS_KEPT + 8):
        rooms.enter(f"r{n}")
        made.append(maker.finish(f"r{n}"))
        made[-1].messages = 1
        rooms.leave(f"r{n}")
        clock.advance(1)
    assert rooms.loaded_count() == IDLE_ROOMS_KEPT + 1  # and the default
    assert [room.closed for room in made] == [True] * 8 + [False] * IDLE_ROOMS_KEPT


def test_listed_rooms_always_open_however_many_strangers_made():
    policy = RoomPolicy(open=True, listed=("class-7a",), max_rooms=2)
    rooms, maker, _ = registry(policy, FakeMaker(stored={"class-7a": 1}))
    for name in ("x1", "x2"):
        assert rooms.is_new(name)
        rooms.enter(name)
        maker.finish(name)
    assert result(rooms.enter("x3")).value.status == 404
    assert not rooms.is_new("class-7a")
    entering = rooms.enter("class-7a")
    listed = maker.finish("class-7a")
    assert result(entering) is listed


def test_a_file_is_read_whatever_its_name_and_a_notepad_mark_is_no_name(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "classes").write_bytes("\ufeffclass-6a\r\nclass-6b\r\n".encode())
    assert RoomPolicy.from_options("classes", "", 5).names == {"class-6a", "class-6b"}
    assert RoomPolicy.from_options("class-6a", "", 5).names == {"class-6a"}
    assert RoomPolicy.from_options(" Open ", "", 5).open
    with pytest.raises(ValueError, match=r"^--listed-rooms: cannot read"):
        RoomPolicy.from_options("classes", "./missing.txt", 5)
