"""The limits that keep one client from spoiling the chat for everyone.

Each is a twistd option (chatbox.tap); the defaults suit a public server
used by people: generous for humans, tight for floods.
"""

import fnmatch
import ipaddress
import math
import socket
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from chatbox.logsafe import printable

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

    # -- admission at accept (chatbox.web.admission) --
    # Connections from one address that have not yet sent a complete request
    # head: far fewer than open ones, so a slow trickler cannot hold them.
    max_pending_per_address: int = 64
    # New connections per second one address may keep up, and the burst above
    # it (0: no limit). A class reloading at once after a restart fits.
    connection_rate: float = 40.0
    connection_burst: int = 400
    # Seconds from accept (or the end of the previous response) for a request
    # head, and for a WebSocket its upgrade; bytes do not extend it.
    handshake_timeout: float = 5.0


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
    hop = hops[-min(trusted_proxies, len(hops))]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        # Not an address (a proxy that logs ports, or a forgery): keep it as a
        # key, but escaped, since it goes into logs.
        return printable(hop, 100)


# -- admission at accept (chatbox.web.admission) --


def address_key(address: str) -> str:
    """The key per-address limits count under.

    One IPv6 subscriber is handed a whole /64 (2^64 addresses), so IPv6 is
    counted by its /64; an IPv4-mapped address counts as the IPv4 one. Runs
    at every accept, hence socket's parser rather than ipaddress (20x
    faster).
    """
    if ":" not in address:
        return address  # IPv4, as Twisted and client_address write it
    try:
        packed = socket.inet_pton(socket.AF_INET6, address.split("%", 1)[0])
    except OSError:
        return address
    if packed[:12] == _IPV4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


_IPV4_MAPPED = bytes(10) + b"\xff\xff"


EVICT_PER_TAKE = 4


class AddressBuckets:
    """A token bucket per address key: for new connections, messages, and
    registrations plus renames, each its own set.

    Kept in least-recently-used order. A bucket unused for `burst / rate`
    seconds is full again, the same as no bucket, so it is dropped; and past
    `max_keys` (an attack from very many addresses) the least recently used
    goes too. Memory stays bounded whatever the address space.
    """

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        # key: (tokens, last used), least recently used first. An OrderedDict,
        # since a plain dict's oldest entry is found by skipping every slot
        # deleted before it, which an attacker can make slow.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def left(self, key: str, now: float) -> bool:
        """Whether `key`'s bucket has a token, spending none."""
        if self.rate <= 0 or key not in self._buckets:
            return True
        tokens, last = self._buckets[key]
        return min(float(self.burst), tokens + (now - last) * self.rate) >= 1

    def take(self, key: str, now: float) -> bool:
        """Spend one token of `key`'s bucket; False if it has none left."""
        if self.rate <= 0:
            return True
        buckets = self._buckets
        refill = self.burst / self.rate
        # Oldest first, a few at a time so that forgetting a flood of
        # addresses never stalls one accept; max_keys bounds them meanwhile.
        for _ in range(EVICT_PER_TAKE):
            if not buckets:
                break
            _key, (_tokens, used) = next(iter(buckets.items()))
            if now - used < refill:
                break
            buckets.popitem(last=False)
        tokens, last = buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        buckets[key] = (tokens - 1 if allowed else tokens, now)
        buckets.move_to_end(key)
        if len(buckets) > self.max_keys:
            buckets.popitem(last=False)
        return allowed

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until `key` has a token again (rounded up, so retrying
        after it always succeeds); for the RateLimited reply."""
        if self.rate <= 0:
            return 0.0
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        return math.ceil(max(0.0, 1 - tokens) / self.rate * 1000) / 1000
