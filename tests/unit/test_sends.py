"""A send_id makes a retry safe: the repeat gets the original, stored once."""

import pytest
from twisted.internet.defer import Deferred, succeed

from chatbox.chat.room import RoomError
from chatbox.chat.sends import RecentSends, valid_send_id


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def result_of(d: Deferred) -> object:
    results: list[object] = []

    def seen(result: object) -> object:
        results.append(result)
        return result

    d.addBoth(seen)
    return results[0] if results else "pending"


def test_a_repeat_within_the_window_gets_the_original():
    clock = Clock()
    sends = RecentSends(clock, window=600)
    assert sends.earlier(("An", "s1")) is None
    sends.track(("An", "s1"), succeed(7))
    clock.now += 599
    assert result_of(sends.earlier(("An", "s1"))) == 7
    assert sends.earlier(("Bo", "s1")) is None  # another nickname's is its own
    assert sends.earlier(("An", "s2")) is None
    clock.now += 2
    assert sends.earlier(("An", "s1")) is None  # the window has passed
    assert len(sends) == 0


def test_a_repeat_while_the_original_is_stored_waits_for_it():
    sends = RecentSends(Clock())
    storing: Deferred[int] = Deferred()
    sends.track(("An", "s1"), storing)
    repeat = sends.earlier(("An", "s1"))
    assert result_of(repeat) == "pending"
    storing.callback(1)
    assert result_of(repeat) == 1
    assert result_of(storing) == 1  # the original's callers see it too


def test_after_a_failure_a_retry_stores_again():
    sends = RecentSends(Clock())
    storing: Deferred[int] = Deferred()
    sends.track(("An", "s1"), storing)
    repeat = sends.earlier(("An", "s1"))
    storing.errback(RoomError("disk full"))
    storing.addErrback(lambda f: None)
    assert result_of(repeat).check(RoomError)
    repeat.addErrback(lambda f: None)
    assert sends.earlier(("An", "s1")) is None


def test_one_address_with_a_new_id_each_time_cannot_grow_it_without_bound():
    sends = RecentSends(Clock(), limit=100)
    for i in range(10_000):
        sends.track(("An", f"s{i}"), succeed(i))
    assert len(sends) == 100
    assert sends.earlier(("An", "s0")) is None  # the oldest went first
    assert result_of(sends.earlier(("An", "s9999"))) == 9999


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("0b7c1e9e-2f4a-4c1d-9c1e-1a2b3c4d5e6f", True),
        ("a", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("has space", False),
        ("a\nb", False),
        ("é", False),
        (42, False),
        (None, False),
        (["a"], False),
    ],
)
def test_send_ids_are_short_and_plain(value, valid):
    assert valid_send_id(value) is valid


def test_what_a_clean_stop_keeps_comes_back_after_a_restart():
    clock = Clock()
    before = RecentSends(clock, window=600)
    before.track(("An", "s1"), succeed(1))
    before.track(("An", "s2"), Deferred())  # still being stored: not kept
    clock.now += 300
    before.track(("Bo", "s3"), succeed(2))
    kept = before.kept()
    assert kept == [("An", "s1", 1, 1600.0), ("Bo", "s3", 2, 1900.0)]

    clock.now += 400  # the restart took a while: An's s1 has expired
    after = RecentSends(clock, window=600)
    assert after.restore(kept) == 1
    assert after.earlier(("An", "s1")) is None
    assert result_of(after.earlier(("Bo", "s3"))) == 2
