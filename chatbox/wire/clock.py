"""When something happened, as v2 says it and as a browser can use it.

v2's `timestamp` is "DD/MM/YYYY, HH:MM:SS" in the server's local time: a
reader in another time zone cannot tell when that was, and it carries no
date a client can compare. So every timestamped shape also carries `time`
(ext): the same instant in epoch milliseconds. `Moment` keeps the two
together so they can never disagree.

Formatting with strftime costs more than everything else a broadcast does
for a short message, so the string is made once per second and reused.
"""

import functools
import re
import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = [
    "LAST_MILLIS",
    "TIMESTAMP_FORMAT",
    "Moment",
    "Timestamps",
    "millis_of",
    "time_of",
]

TIMESTAMP_FORMAT = "%d/%m/%Y, %H:%M:%S"
# The last millisecond of 31/12/9999 (UTC): what a 4-digit year can say.
LAST_MILLIS = 253_402_300_799_999


class Moment(NamedTuple):
    text: str  # v2's `timestamp`
    millis: int  # ext `time`: epoch milliseconds, within the same second


class Timestamps:
    def __init__(self, seconds: Callable[[], float] = time.time) -> None:
        self._seconds = seconds
        self._second = -1
        self._text = ""

    def now(self) -> Moment:
        seconds = self._seconds()
        second = int(seconds)
        if second != self._second:
            self._second = second
            self._text = time.strftime(TIMESTAMP_FORMAT, time.localtime(second))
        # Never past the second the text names, whatever the float's rounding.
        return Moment(self._text, min(int(seconds * 1000), second * 1000 + 999))


def time_of(text: str, millis: object) -> int | None:
    """The `time` of something stored with v2 timestamp `text` and maybe a
    `time` (`millis`): that one if it is an integer a 4-digit year can
    have, else read from `text` (None if it cannot be). One rule for what
    a file, a stream entry or a stored entry says. A `time` that disagrees
    with `text` is kept: a history moved from a server in another zone
    disagrees, and `time` is the one it meant."""
    if type(millis) is int and 0 <= millis <= LAST_MILLIS:
        return millis
    return millis_of(text)


_V2 = re.compile(r"(\d\d)/(\d\d)/(\d{4}), (\d\d):(\d\d):(\d\d)", re.ASCII)


def millis_of(text: str) -> int | None:
    """The epoch milliseconds of a v2 timestamp read in this server's local
    time, or None if `text` is not one: how history written before `time`
    existed gets it. A start may read a million of them, so the zone is
    consulted once per hour of the calendar, not once per entry."""
    match = _V2.fullmatch(text)
    if match is None:
        return None
    day, month, year, hour, minute, second = map(int, match.groups())
    if minute > 59 or second > 59:
        return None
    start = _hour_start(year, month, day, hour)
    if start is None:
        return None
    return (start + minute * 60 + second) * 1000


@functools.lru_cache(maxsize=4096)
def _hour_start(year: int, month: int, day: int, hour: int) -> int | None:
    """Epoch seconds of HH:00:00 local time on that day; None for what
    mktime would quietly normalise (31/02, 25:00, an hour a DST change
    skips). Within one hour the zone's offset is the same, but for the hour
    a DST change repeats, which is ambiguous in v2's text anyway."""
    fields = (year, month, day, hour, 0, 0, 0, 0, -1)
    try:
        seconds = time.mktime(fields)
        if time.localtime(seconds)[:4] != fields[:4]:
            return None
    except (OverflowError, ValueError):
        return None
    return int(seconds)
