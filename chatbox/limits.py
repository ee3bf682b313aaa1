"""The limits that keep one client from spoiling the chat for everyone.

Each is a twistd option (chatbox.tap); the defaults suit a public server
used by people: generous for humans, tight for floods.
"""

import fnmatch
import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AddressBuckets",
    "Limits",
    "TokenBucket",
    "address_key",
    "client_address",
    "origin_allowed",
]


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
    # Per client address, whatever number of connections it spreads them
    # over: messages, and registrations plus renames. Reconnecting resets a
    # connection's own bucket, never these. A class of 40 behind one school
    # NAT all saying hello at once, or all rejoining after a restart, fits
    # in the bursts.
    address_send_rate: float = 20.0
    address_send_burst: int = 200
    address_name_rate: float = 5.0
    address_name_burst: int = 200
    # Bytes of history one `get` reply may carry (its newest entries that
    # fit), and of large replies the server holds for all clients at once.
    max_get_bytes: int = 8 * 1024 * 1024
    max_reply_bytes: int = 64 * 1024 * 1024


class TokenBucket:
    """Admit `rate` requests a second on average and `burst` at once."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def full(self, now: float) -> bool:
        """True once the bucket has refilled: it then holds no memory of use."""
        return self._tokens + (now - self._last) * self.rate >= self.burst

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


def address_key(address: str) -> str:
    """What per-address limits count by: an IPv4 address, or an IPv6 /64.

    One IPv6 subscriber is routinely given a whole /64 (2^64 addresses), so
    counting single IPv6 addresses would limit nobody.
    """
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address  # a unix socket, say: one key for all of it
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


class AddressBuckets:
    """A token bucket per client address (see address_key).

    Full buckets are forgotten in sweeps, so an attacker cycling through
    addresses costs memory only for those it used within one refill time.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._sweep_at = 1024

    def take(self, address: str | None, now: float) -> float:
        """0.0 if admitted, else seconds until this address may again."""
        if self.rate <= 0 or address is None:
            return 0.0
        key = address_key(address)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        self._buckets = {
            key: bucket
            for key, bucket in self._buckets.items()
            if not bucket.full(now)
        }
        self._sweep_at = max(1024, 2 * len(self._buckets))


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
