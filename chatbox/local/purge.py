"""Retention's purge for a single process: every room's expired messages
out of its files, loaded or not, visited or not.

A room is reached the way a connection reaches it, `Rooms.enter` and
`leave`: a room nobody is in is loaded for the while and unloaded by the
registry as usual, so its files never have two owners (the purger never
opens a history file itself). Its `expire` goes through the store's
deletion and purge path (one short journal record, data.json rewritten,
the retired journal removed), so what expired is in no file afterwards.

Loading a room costs a read of its whole file, so an unloaded room is
entered only when it can hold something expired. After each visit the
purger remembers when the room's oldest kept message will expire (never,
without an age limit or a message) and the size and time of its files
then; a count limit only moves when messages are added, which changes
those files. A room is visited again once that moment has passed or its
files changed (someone used it since); a room never visited in this
process is visited once. A loaded room is checked in memory (`due`) and
entered only if something in it has expired.
"""

import os
import weakref
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from chatbox.chat.retention import DAY_MS, IPurger, PurgeFailed, RetentionPolicy
from chatbox.chat.roomnames import DEFAULT
from chatbox.chat.rooms import Rooms
from chatbox.local import datafile
from chatbox.local.rooms import SUFFIX, rooms_folder

__all__ = ["LocalPurger", "PurgeIncomplete"]

NEVER = float("inf")

# How long one room's purge is waited for. The store retries a purge that
# fails (a full disk) every 10 s for as long as it takes, and the expiry
# is durable meanwhile; the walk goes on to the other rooms (this room
# counts as a failure) instead of waiting with it, and a shutdown is never
# held up by it.
ROOM_WAIT_SECONDS = 120.0

# A room's history files as they were: (size, mtime_ns) of NAME.json and
# of its journal, None for one that is not there.
Stamp = tuple[tuple[int, int] | None, tuple[int, int] | None]


class PurgeIncomplete(PurgeFailed):
    """Some rooms could not be purged this time (logged one by one); the
    next purge tries them again."""


class _Visited(NamedTuple):
    stamp: Stamp | None  # None: not known (checked while loaded)
    due_ms: float  # when something in it can have expired next


def _file_stamp(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_size, found.st_mtime_ns


def _stamp(path: str) -> Stamp:
    return _file_stamp(path), _file_stamp(datafile.journal_paths(path)[0])


@implementer(IPurger)
class LocalPurger:
    log = Logger(namespace="chatbox.retention")

    def __init__(self, rooms: Rooms, reactor: Any) -> None:
        self._rooms = rooms
        self._reactor = reactor
        self._visited: dict[str, _Visited] = {}
        self._stopping = False
        self._waiting: Deferred[int] | None = None
        self.visits = 0  # rooms entered to be purged, for tests and figures
        if hasattr(reactor, "addSystemEventTrigger"):
            # A pass over many rooms stops between two rooms at shutdown
            # instead of holding it up until the last. Weakly: the trigger
            # outlives a purger the tests' servers made and dropped, and
            # must not keep its rooms' histories alive.
            stop = weakref.WeakMethod(self._stop)
            reactor.addSystemEventTrigger(
                "before", "shutdown", lambda: (stop() or (lambda: None))()
            )

    def _stop(self) -> None:
        self._stopping = True
        waiting = self._waiting
        if waiting is not None and not waiting.called:
            waiting.errback(PurgeFailed("server shutting down"))

    def _bounded(self, expiring: "Deferred[int]") -> "Deferred[int]":
        """`expiring`'s result, or a failure once ROOM_WAIT_SECONDS pass or
        the server stops first; `expiring` itself is never cancelled (it is
        the store's, which fires it once the files are purged)."""
        waiter: Deferred[int] = Deferred()

        def settle(result: object) -> None:
            if not waiter.called:
                waiter.callback(result)  # a Failure goes down the errback side

        def too_slow() -> None:
            if not waiter.called:
                waiter.errback(
                    PurgeFailed(
                        f"still purging after {ROOM_WAIT_SECONDS:g} s (it goes "
                        "on; a failing disk is retried every 10 s)"
                    )
                )

        timer = self._reactor.callLater(ROOM_WAIT_SECONDS, too_slow)

        def done(result: object) -> object:
            if timer.active():
                timer.cancel()
            self._waiting = None
            return result

        waiter.addBoth(done)
        self._waiting = waiter
        expiring.addBoth(settle)
        return waiter

    def _path_of(self, name: str) -> str:
        """Where LocalRooms keeps room `name` (beside the default room's
        file: chatbox.local.rooms)."""
        folder = rooms_folder(self._rooms.default.where)
        return os.path.join(folder, name + SUFFIX)

    def _in_thread(self, f: Any, *args: Any) -> Deferred:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    def purge(self, policy: RetentionPolicy, now_ms: int) -> "Deferred[dict[str, int]]":
        return Deferred.fromCoroutine(self._purge(policy, now_ms))

    async def _purge(self, policy: RetentionPolicy, now_ms: int) -> dict[str, int]:
        names = self._rooms.every_room()
        known = set(names)
        for gone in [n for n in self._visited if n not in known]:
            del self._visited[gone]
        loaded = dict(self._rooms.loaded())
        unloaded = [
            n
            for n in names
            if n not in loaded and n != DEFAULT and not policy.for_room(n).keeps_all
        ]
        stamps = (
            await self._in_thread(
                lambda: {n: _stamp(self._path_of(n)) for n in unloaded}
            )
            if unloaded
            else {}
        )
        removed: dict[str, int] = {}
        failed: list[str] = []
        for name in names:
            if self._stopping:
                break
            retention = policy.for_room(name)
            if retention.keeps_all:
                self._visited.pop(name, None)
                continue
            room = loaded.get(name)
            if room is not None:
                if not room.due(now_ms):
                    continue
            else:
                seen = self._visited.get(name)
                if (
                    seen is not None
                    and seen.stamp == stamps.get(name)
                    and now_ms < seen.due_ms
                ):
                    continue
            try:
                count = await self._visit(name, retention.days, now_ms)
            except Exception as e:
                failed.append(name)
                self.log.error(
                    "retention: could not purge room {room}: {error}",
                    room=name or "(default)",
                    error=str(e) or e.__class__.__name__,
                )
                continue
            if count:
                removed[name] = count
        if failed:
            raise PurgeIncomplete(
                f"{len(failed)} room(s) not purged; "
                f"{sum(removed.values())} message(s) purged from the others",
                removed,
            )
        return removed

    async def _visit(self, name: str, days: float, now_ms: int) -> int:
        """Enter the room (loading it if nobody is in it), expire, and
        remember when it can next have something to expire."""
        room = await self._rooms.enter(name)
        self.visits += 1
        try:
            count = await self._bounded(room.expire(now_ms))
            oldest = room.oldest_kept_time()
            if oldest is None or not days:
                due: float = NEVER
            else:
                due = oldest + days * DAY_MS
            stamp = None
            if name != DEFAULT:
                stamp = await self._in_thread(_stamp, self._path_of(name))
            self._visited[name] = _Visited(stamp, due)
            return count
        finally:
            self._rooms.leave(name)
