"""The limits that keep one client from spoiling the chat for everyone.

Each is a twistd option (chatbox.tap); the defaults suit a public server
used by people: generous for humans, tight for floods.
"""

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Limits", "TokenBucket", "client_address", "origin_allowed"]


@dataclass(frozen=True)
class Limits:
    # Requests per second a connection may keep up, and the burst above it.
    rate: float = 5.0
    burst: int = 20
    # Open connections, in total and from one client address (0: no limit).
    # A class behind one school NAT shares an address, hence the room.
    max_connections: int = 10_000
    max_connections_per_address: int = 200
    # Origin patterns allowed to open the chat socket; empty allows any.
    allowed_origins: tuple[str, ...] = ()
    # Reverse proxies in front of chatbox whose X-Forwarded-For to trust.
    trusted_proxies: int = 0
    # Bytes a client may leave unread before it is cut off as too slow.
    max_pending_output: int = 4 * 1024 * 1024


class TokenBucket:
    """Admit `rate` requests a second on average and `burst` at once."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> float:
        """Spend a token: 0.0 if admitted, else seconds until one is there."""
        if self.rate <= 0:
            return 0.0
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        # Round up, so retrying after retry_after always succeeds.
        return math.ceil((1 - self._tokens) / self.rate * 1000) / 1000


def origin_allowed(origin: str | None, patterns: Sequence[str]) -> bool:
    """Browsers always send Origin; other clients may not, and are let in,
    since the check is there to stop other sites' pages, not programs."""
    if not patterns or not origin:
        return True
    origin = origin.lower().rstrip("/")
    return any(fnmatch.fnmatchcase(origin, p.lower().rstrip("/")) for p in patterns)


def client_address(
    peer_host: str, forwarded_for: str | None, trusted_proxies: int
) -> str:
    """The address a client connects from.

    Each trusted proxy appends the address it saw to X-Forwarded-For, so with
    N trusted proxies the client is the N-th entry from the right; anything
    further left could have been written by the client itself.
    """
    if trusted_proxies <= 0 or not forwarded_for:
        return peer_host
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    if not hops:
        return peer_host
    return hops[-min(trusted_proxies, len(hops))]
