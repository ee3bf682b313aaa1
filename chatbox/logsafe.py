"""Client-supplied text on its way into the log.

A path, an Origin or a forged X-Forwarded-For may carry ESC and other
control characters; written raw, they rewrite an operator's terminal or
forge log lines. Everything a client chose goes through `printable` first.
"""

from typing import Any

from twisted.logger import Logger

__all__ = ["LogBudget", "printable"]


def printable(value: object, limit: int = 200) -> str:
    """`value` as text with every non-printable character escaped as repr
    would (`\\x1b`, `\\n`, `\\u200b`), cut to about `limit` characters so one
    request cannot write a megabyte of log."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
    else:
        text = str(value)
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text + "..." if cut else text


class LogBudget:
    """Routine log lines per client address: at most `lines` per `period`.

    Rate limits bound what one address can do, but at those rates an
    address that reconnects over and over still writes several lines per
    connection (connected, registered, refused, left). Past its budget an
    address's routine lines are counted instead, and one line per period
    says how many were left out, so the log grows with the number of
    addresses, not with what each of them does.
    """

    def __init__(
        self, clock: Any, log: Logger, lines: int = 200, period: float = 10.0
    ) -> None:
        self._clock = clock
        self._log = log
        self._lines = lines
        self._period = period
        self._used: dict[str, int] = {}
        self._skipped: dict[str, int] = {}
        self._timer: Any = None

    def allow(self, address: str | None) -> bool:
        """True if a routine line about `address` may be written now."""
        if address is None or self._lines <= 0:
            return True
        if self._timer is None:
            self._timer = self._clock.callLater(self._period, self.flush)
        used = self._used.get(address, 0)
        if used < self._lines:
            self._used[address] = used + 1
            return True
        self._skipped[address] = self._skipped.get(address, 0) + 1
        return False

    def flush(self) -> None:
        """Close the period: say what was left out, start counting anew."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        skipped, self._skipped, self._used = self._skipped, {}, {}
        for address, count in sorted(skipped.items(), key=lambda item: -item[1]):
            self._log.info(
                "left out {count} routine log line(s) about {address} "
                "(over {lines} in {period} s)",
                count=count,
                address=printable(address, 100),
                lines=self._lines,
                period=self._period,
            )
