"""`timestamp` and `time` name one instant, and old history gets `time`."""

import time

import pytest

from chatbox.wire.clock import LAST_MILLIS, Timestamps, millis_of, time_of


def test_time_is_the_instant_the_v2_timestamp_names():
    seconds = [1795964709.9996, 1795964710.0004, 1795964710.5]
    stamps = Timestamps(lambda: seconds.pop(0))
    for _ in range(3):
        when = stamps.now()
        # The text, read back in this zone, is the whole second of `time`.
        assert millis_of(when.text) == when.millis // 1000 * 1000
    assert when.millis == 1795964710500


def test_a_v2_timestamp_reads_as_local_time():
    expected = int(time.mktime((2026, 11, 24, 14, 5, 9, 0, 0, -1))) * 1000
    assert millis_of("24/11/2026, 14:05:09") == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "t",
        "24/11/2026 14:05:09",
        "24-11-2026, 14:05:09",
        "31/02/2026, 10:00:00",  # mktime would make it 3 March
        "24/11/2026, 25:00:00",
        "24/13/2026, 10:00:00",
        "+1/11/2026, 10:00:00",
        "24/11/2026, 14:05:09 ",
        "２4/11/2026, 14:05:09",
    ],
)
def test_what_is_not_a_v2_timestamp_has_no_time(text):
    assert millis_of(text) is None


def test_a_stored_time_is_kept_if_a_date_can_have_it_else_read_from_the_text():
    text = "24/11/2026, 14:05:09"
    assert time_of(text, 1577844000000) == 1577844000000  # another zone's: kept
    for impossible in (-5, LAST_MILLIS + 1, 1.5e12, "1577844000000", True, None):
        assert time_of(text, impossible) == millis_of(text), impossible
    assert time_of("not a time", None) is None
