"""One connection's refused requests: counted, summarized, and cut short.

A flood is answered with refusals, and each refusal must cost the server
almost nothing, or the flood still wins: one log line per refusal once grew
the log faster than the attack's own bytes and slowed everyone's requests.
So refusals are counted, and logged as one summary line per connection per
period (the first at once, so an operator sees trouble start). A connection
that keeps sending while it is being told RateLimited is not a person
retrying: past a limit within one period it is to be closed.
"""

from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["PERIOD", "Refusals"]

PERIOD = 10.0


class Refusals:
    def __init__(
        self,
        clock: Any,
        flood_limit: int,
        log: Callable[[int, str], None],
        period: float = PERIOD,
    ) -> None:
        """`clock` is an IReactorTime; `log(total, counts)` writes a line."""
        self._clock = clock
        self._flood_limit = flood_limit
        self._log = log
        self._period = period
        self._counts: Counter[str] = Counter()
        self._logged_at = float("-inf")
        self._timer: Any = None
        self._window_start = float("-inf")
        self._rate_limited = 0

    def count(self, what: str, rate_limited: bool) -> str:
        """Count one refusal. Returns "answer" (reply as usual),
        "flooding" (the first refusal over the limit: close the connection)
        or "drop" (over the limit already: not even a reply)."""
        now = self._clock.seconds()
        self._counts[what] += 1
        if self._timer is None:
            due = self._logged_at + self._period
            if now >= due:
                self.flush()
            else:
                self._timer = self._clock.callLater(due - now, self.flush)
        if not rate_limited:
            return "answer"
        if now - self._window_start >= self._period:
            self._window_start, self._rate_limited = now, 0
        self._rate_limited += 1
        if self._rate_limited <= self._flood_limit:
            return "answer"
        return "flooding" if self._rate_limited == self._flood_limit + 1 else "drop"

    def flush(self) -> None:
        """Write what was counted since the last line, if anything."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._counts:
            counts, self._counts = self._counts, Counter()
            self._logged_at = self._clock.seconds()
            self._log(
                sum(counts.values()),
                ", ".join(f"{what} x{n}" for what, n in counts.most_common()),
            )
