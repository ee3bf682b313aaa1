"""Recent `send_id`s: what makes a client's retry safe.

A client that lost its connection while a message was being stored cannot
know whether it was; a plain retry would store it twice, for everyone. With
a `send_id` (ext) the retry is recognised: within WINDOW of the original,
the same nickname and id get the original's reply and nothing is stored.
A repeat that comes while the original is still being stored waits for it;
one that comes after the original failed is a new attempt.

Bounded by count as well as time, oldest dropped first: one address sending
as fast as it is allowed with a new id each time must not grow this without
limit. Dropping an entry early can only make a very late retry store again,
which is what a client without `send_id` gets anyway. Only the message id
is kept, never the content (the history has it): 50,000 entries of the
longest nicknames in a 4-byte script are some 40 MB, 50,000 of 4,000-emoji
messages would have been 800 MB.

Held in memory by the single-process room, which writes them beside the
history when it stops cleanly and reads them back when it starts, so a
deploy forgets none; a crash does (the cluster keeps them in Redis).
"""

from collections import OrderedDict
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed

__all__ = ["MAX_SEND_ID", "MAX_TRACKED", "WINDOW", "RecentSends", "valid_send_id"]

WINDOW = 600.0  # seconds a repeat is recognised
MAX_TRACKED = 50_000
MAX_SEND_ID = 64
_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")

Key = tuple[str, str]  # (nickname as typed, send_id)
# What outlives a restart: nickname, send_id, message id, when it is
# forgotten (seconds of the reactor's clock, which is the wall clock).
Kept = tuple[str, str, int, float]


def valid_send_id(value: object) -> bool:
    """1..64 of [A-Za-z0-9_-]: room for a UUID, nothing that needs escaping
    in a Redis key or a log line."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_SEND_ID
        and _ALLOWED.issuperset(value)
    )


class _Entry:
    __slots__ = ("expires", "message_id", "waiters")

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.message_id: int | None = None
        self.waiters: list[Deferred[int]] = []


class RecentSends:
    def __init__(
        self,
        seconds: Callable[[], float],
        window: float = WINDOW,
        limit: int = MAX_TRACKED,
    ) -> None:
        self._seconds = seconds
        self._window = window
        self._limit = limit
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def earlier(self, key: Key) -> "Deferred[int] | None":
        """The original's message id if `key` was sent within the window
        (once it is stored, if it is being stored), else None: the caller
        stores the message and calls `track`."""
        self._expire()
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.message_id is not None:
            return succeed(entry.message_id)
        waiter: Deferred[int] = Deferred()
        entry.waiters.append(waiter)
        return waiter

    def track(self, key: Key, outcome: "Deferred[int]") -> None:
        """Remember `key` while `outcome` (the message id) settles; after a
        success, for the window; after a failure, not at all (a retry must
        store it)."""
        entry = _Entry(self._seconds() + self._window)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)

        def stored(message_id: int) -> int:
            entry.message_id = message_id
            waiters, entry.waiters = entry.waiters, []
            for waiter in waiters:
                waiter.callback(message_id)
            return message_id

        def failed(failure: object) -> object:
            if self._entries.get(key) is entry:
                del self._entries[key]
            waiters, entry.waiters = entry.waiters, []
            for waiter in waiters:
                waiter.errback(failure)
            return failure

        outcome.addCallbacks(stored, failed)

    def kept(self) -> list[Kept]:
        """The stored ones still in the window, oldest first, to be written
        out when the server stops."""
        self._expire()
        return [
            (name, send_id, entry.message_id, entry.expires)
            for (name, send_id), entry in self._entries.items()
            if entry.message_id is not None
        ]

    def restore(self, kept: list[Kept]) -> int:
        """Take back what `kept` gave before a restart; returns how many are
        still in the window."""
        now = self._seconds()
        for name, send_id, message_id, expires in kept:
            if expires > now:
                entry = _Entry(expires)
                entry.message_id = message_id
                self._entries[(name, send_id)] = entry
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)
        return len(self._entries)

    def _expire(self) -> None:
        now = self._seconds()
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                return
            del self._entries[key]
