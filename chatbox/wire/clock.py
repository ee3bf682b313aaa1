"""When something happened, as v2 says it and as a browser can use it.

v2's `timestamp` is "DD/MM/YYYY, HH:MM:SS" in the server's local time: a
reader in another time zone cannot tell when that was, and it carries no
date a client can compare. So every timestamped shape also carries `time`
(ext): the same instant in epoch milliseconds. `Moment` keeps the two
together so they can never disagree.

Formatting with strftime costs more than everything else a broadcast does
for a short message, so the string is made once per second and reused.
"""

import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["TIMESTAMP_FORMAT", "Moment", "Timestamps", "millis_of"]

TIMESTAMP_FORMAT = "%d/%m/%Y, %H:%M:%S"
# Where "DD/MM/YYYY, HH:MM:SS" has no digit.
_PUNCTUATION = frozenset((2, 5, 10, 11, 14, 17))


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


def millis_of(text: str) -> int | None:
    """The epoch milliseconds of a v2 timestamp read in this server's local
    time, or None if `text` is not one: how history written before `time`
    existed gets it. Sliced by hand rather than strptime'd, because a start
    may read 100,000 of them."""
    if len(text) != 20 or any(
        (c in "0123456789") != (i not in _PUNCTUATION) for i, c in enumerate(text)
    ):
        return None
    if text[2] != "/" or text[5] != "/" or text[10:12] != ", ":
        return None
    if text[14] != ":" or text[17] != ":":
        return None
    day, month, year = int(text[0:2]), int(text[3:5]), int(text[6:10])
    hour, minute, second = int(text[12:14]), int(text[15:17]), int(text[18:20])
    fields = (year, month, day, hour, minute, second, 0, 0, -1)
    try:
        seconds = time.mktime(fields)
        # Reject what mktime quietly normalises (31/02, 25:00, a DST gap).
        if time.localtime(seconds)[:6] != fields[:6]:
            return None
    except (OverflowError, ValueError):
        return None
    return int(seconds) * 1000
