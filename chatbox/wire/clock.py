"""v2 timestamps: "DD/MM/YYYY, HH:MM:SS" in the server's local time.

Formatting with strftime costs more than everything else a broadcast does
for a short message, so the string is made once per second and reused.
"""

import time
from collections.abc import Callable

__all__ = ["TIMESTAMP_FORMAT", "Timestamps"]

TIMESTAMP_FORMAT = "%d/%m/%Y, %H:%M:%S"


class Timestamps:
    def __init__(self, seconds: Callable[[], float] = time.time) -> None:
        self._seconds = seconds
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(self._seconds())
        if second != self._second:
            self._second = second
            self._text = time.strftime(TIMESTAMP_FORMAT, time.localtime(second))
        return self._text
