"""Refusals: plain-text answers, and the summary they are logged in.

A flood of refused connections must cost little and write little: each
refusal below twisted.web is a response built once at import
(chatbox.httptext), and the log gets a count per address every
SUMMARY_SECONDS, never a line per refusal.
"""

from collections import Counter

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.server import Request

from chatbox.logsafe import printable

__all__ = ["RefusalLog", "plain"]

SUMMARY_SECONDS = 10.0
# Addresses named one by one in a summary; the rest are counted together.
SUMMARY_ADDRESSES = 20


def plain(request: Request, code: int, reason: str) -> bytes:
    """Answer a request served as usual with `code` and its reason as text;
    returns the body for the resource to return (or write)."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return reason.encode() + b"\n"


class RefusalLog:
    """Refusals, counted per address and logged as one summary line per
    address per SUMMARY_SECONDS, never one line each."""

    log = Logger()

    def __init__(self, reactor: IReactorTime) -> None:
        self.reactor = reactor
        self._counts: dict[str, Counter[str]] = {}
        self._call: IDelayedCall | None = None

    def note(self, address: str, reason: str) -> None:
        counts = self._counts.get(address)
        if counts is None:
            if len(self._counts) >= 10 * SUMMARY_ADDRESSES:
                address = "other addresses"
            counts = self._counts.setdefault(address, Counter())
        counts[reason] += 1
        if self._call is None:
            self._call = self.reactor.callLater(SUMMARY_SECONDS, self.flush)

    def flush(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        counts, self._counts = self._counts, {}
        ranked = sorted(counts.items(), key=lambda item: -sum(item[1].values()))
        for address, reasons in ranked[:SUMMARY_ADDRESSES]:
            self.log.info(
                "refused {count} connection(s) from {address}: {reasons}",
                count=sum(reasons.values()),
                address=printable(address, 100),
                reasons=", ".join(f"{n} {why}" for why, n in reasons.most_common()),
            )
        rest = ranked[SUMMARY_ADDRESSES:]
        if rest:
            self.log.info(
                "refused {count} connection(s) from {addresses} other addresses",
                count=sum(sum(reasons.values()) for _, reasons in rest),
                addresses=len(rest),
            )
