"""The room of a single chatbox process: ARNS in memory, history in data.json.

Everything but writing history happens on the reactor thread, so claims and
renames are atomic and their Deferreds have fired before they are returned.
Events go to this process's connections directly.
"""

from collections.abc import Callable, Hashable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatbox.chat.arns import NameTaken, Registry
from chatbox.chat.retention import KEEP_ALL, Retention
from chatbox.chat.room import (
    Deliver,
    Imported,
    IRoom,
    Page,
    Posted,
    RoomError,
    posted_from,
)
from chatbox.chat.sends import RecentSends
from chatbox.local import datafile
from chatbox.local.history import time_in
from chatbox.local.store import DurableStore
from chatbox.wire import codec, messages
from chatbox.wire.clock import Moment, time_of

__all__ = ["LocalRoom"]


def _nobody(event: messages.Message, exclude: Hashable | None) -> None:
    pass


@implementer(IRoom)
class LocalRoom:
    log = Logger()
    # Set by whoever makes the room (tap for the default room, LocalRooms).
    retention: Retention = KEEP_ALL

    def __init__(self, store: DurableStore, seconds: Callable[[], float]) -> None:
        self.store = store
        self.where = store.path
        self.registry = Registry()
        self.sends = RecentSends(seconds)
        self._seconds = seconds
        self._deliver: Deliver = _nobody
        # The newest id retention has cut, ever: what has expired stays
        # expired, even if deleting newer messages (a spammer's, under a
        # count limit) would leave room for it again before the purge.
        self._expired_through = 0

    @property
    def healthy(self) -> bool:
        return self.store.healthy

    def attach(self, deliver: Deliver, lost: Callable[[list[Any]], None]) -> None:
        # Nothing here can take a nickname away from a live connection.
        self._deliver = deliver

    def start(self) -> None:
        self.store.start()

    def name_of(self, owner: Hashable) -> str | None:
        return self.registry.name_of(owner)

    def audience(self) -> Iterable[Hashable]:
        return self.registry.owners()

    def registered_count(self) -> int:
        return len(self.registry)

    def message_count(self) -> int:
        return len(self.store.history)

    def claim(
        self, owner: Hashable, name: str, when: Moment, verified: bool = False
    ) -> "Deferred[None]":
        try:
            self.registry.claim(owner, name, verified)
        except NameTaken as taken:
            return fail(taken)
        self._deliver(messages.joined(name, when, verified), owner)
        return succeed(None)

    def rename(
        self, owner: Hashable, name: str, when: Moment, verified: bool = False
    ) -> "Deferred[str]":
        try:
            old = self.registry.rename(owner, name, verified)
        except NameTaken as taken:
            return fail(taken)
        self._deliver(messages.renamed(old, name, when, verified), owner)
        return succeed(old)

    def release(self, owner: Hashable, when: Moment) -> str | None:
        name = self.registry.release(owner)
        if name is not None:
            self._deliver(messages.left(name, when), owner)
        return name

    def post(
        self,
        owner: Hashable,
        name: str,
        content: str,
        when: Moment,
        send_id: str | None = None,
        mark: str | None = None,
    ) -> "Deferred[Posted]":
        key = None if send_id is None else (name, send_id)
        if key is not None:
            earlier = self.sends.earlier(key)
            if earlier is not None:

                def original(message_id: int) -> Posted:
                    entry = self.store.history.entry(message_id)
                    return posted_from(entry, Posted(message_id, name, content, when))

                def again(failure: Failure) -> "Deferred[Posted]":
                    # The original was not stored: this repeat is a new try
                    # (and the first of the waiters becomes the original).
                    failure.trap(RoomError)
                    return self.post(owner, name, content, when, send_id, mark)

                return earlier.addCallbacks(original, again)
        stored = self.store.append(name, content, when, mark)
        if key is not None:
            self.sends.track(key, stored)

        def durable(message_id: int) -> Posted:
            self._deliver(messages.posted(name, content, when, message_id, mark), owner)
            return Posted(message_id, name, content, when)

        return stored.addCallback(durable)

    def delete(self, ids: list[int], when: Moment) -> "Deferred[list[int]]":
        """Out of `get` now; everyone told once the deletion is durable (a
        deletion that cannot be written puts the messages back, and nobody
        was told); fires once no file holds their content."""

        def tell(removed: list[int]) -> None:
            self._deliver(messages.deleted(removed, when), None)

        first = self._first_kept()
        if first:
            # Under a count limit, deleting newer messages (a flood) frees
            # places that what retention already cut would take back, after
            # a restart too: it is purged first, in the same queue, durably.
            expired = self.store.expire(first)
            expired.addErrback(
                lambda failure: self.log.failure(
                    "expired messages not purged before a deletion; the next "
                    "purge tries again",
                    failure,
                )
            )
        return self.store.delete(ids, tell)

    def delete_by(
        self, name: str, since: int | None, until: int | None, when: Moment
    ) -> "Deferred[list[int]]":
        # A message stored after the scan began is not in it.
        found = self.store.matching(name, since, until)
        return found.addCallback(self.delete, when)

    def typing(self, owner: Hashable, name: str, when: Moment) -> None:
        self._deliver(messages.typing(name), owner)

    def online_count(self) -> "Deferred[int]":
        return succeed(self.registered_count())

    def last_activity(self) -> int | None:
        entries = self.store.history.entries
        if not entries:
            return None
        stored = codec.decode(entries[-1])
        return time_of(stored["timestamp"], stored.get("time"))

    def _first_kept(self, now_ms: int | None = None) -> int:
        """How many of the oldest entries retention has expired now: every
        read leaves them out, whether the purge has removed them yet or not."""
        if now_ms is None:
            now_ms = int(self._seconds() * 1000)
        history = self.store.history
        first = max(
            history.first_kept(self.retention, now_ms),
            history.count_through(self._expired_through),
        )
        if first:
            self._expired_through = max(self._expired_through, history.id_at(first - 1))
        return first

    def entries(self, after: int, limit: int) -> "Deferred[list[tuple[int, bytes]]]":
        history = self.store.history
        return succeed(history.following(after, limit, self._first_kept()))

    def import_entries(self, entries: list[Imported]) -> "Deferred[list[int]]":
        return self.store.import_messages(entries)

    def expire(self, now_ms: int) -> "Deferred[int]":
        return Deferred.fromCoroutine(self._expire(now_ms))

    async def _expire(self, now_ms: int) -> int:
        removed = await self.store.expire(self._first_kept(now_ms))
        if self.store.torn_files:
            await self.store.forget_torn(self.oldest_kept_time())
        return len(removed)

    def oldest_kept_time(self) -> int | None:
        """The time of the oldest message in the history (after a purge,
        the oldest kept), None if there is none; 0 if it has no time."""
        entries = self.store.history.entries
        if not entries:
            return None
        return time_in(entries[0]) or 0

    def due(self, now_ms: int) -> bool:
        """Whether `expire(now_ms)` would remove anything: read now, off no
        file, so the purger passes over a loaded room with nothing expired
        without entering it."""
        if self._first_kept(now_ms):
            return True
        if not self.store.torn_files:
            return False
        oldest = self.oldest_kept_time()
        return any(oldest is None or kept < oldest for _, kept in self.store.torn_files)

    def page(
        self, limit: int, before: int | None, after: int | None, max_bytes: int = 0
    ) -> "Deferred[Page]":
        history = self.store.history
        entries = history.page(limit, before, after, max_bytes, self._first_kept())
        registry = self.registry
        return succeed(Page(entries, registry.online(), registry.verified_online()))

    def health(self) -> dict[str, Any]:
        return {"persistence": "ok" if self.store.healthy else "failing"}

    def flush(self) -> "Deferred[None]":
        return self.store.flush()

    def restore_sends(self) -> int:
        """Read back the send_ids a clean stop wrote (blocking: start-up
        only); returns how many are still in the window. One that cannot be
        read is logged and skipped: without it a retry may store again."""
        try:
            kept = datafile.read_sends(self.store.path)
        except datafile.HistoryFileError as e:
            self.log.warn("ignored the send_ids of the last run: {error}", error=e)
            return 0
        return self.sends.restore(kept)

    def close(self) -> "Deferred[bool]":
        kept = self.sends.kept()
        path = self.store.path

        def keep_sends() -> None:
            datafile.write_sends(path, kept)

        return Deferred.fromCoroutine(self.store.close(keep_sends))
