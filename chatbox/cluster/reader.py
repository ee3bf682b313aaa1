# -*- test-case-name: tests.unit.test_cluster_units -*-
"""Follows the event streams of the rooms this node has loaded, and hands
each event on, in order.

Every change to a room's state is written, by the same script, as one event
in the room's Redis stream. Why a stream and not pub/sub: pub/sub forgets
what a node missed while its connection was down, so a Redis restart would
silently lose joins and leaves. A stream keeps them: every node reads it
from the last entry it handled, so after any reconnect it carries on with
the next event, exactly once, in the one order Redis wrote them (which is
each originating node's order too).

One reader per node, on one connection of its own (XREAD blocks it),
follows every room the node has loaded: each XREAD names all their streams,
each from its own last entry. So a node with a thousand rooms loaded holds
two connections to Redis, not two thousand, and a room it has not loaded
costs it nothing. The set of streams changes when a room loads or unloads;
a blocked XREAD would not see a new room until it timed out (up to a
second), so the node wakes its reader by adding an entry to a one-entry
stream of its own (`Keys.wake_of`), which every XREAD also names. Chosen
over `CLIENT UNBLOCK` (an admin command a managed Redis may deny) and over a
short block timeout (a poll, however idle the node): a wake-up costs one
XADD per room loaded, and the entry it leaves is read past, never lost,
even when it is written before the XREAD it is meant to end.

The room decides what an event means; it may ask the reader to hold at an
event (until a claim's reply has gone out) and to resume later, and the
reader hands over nothing more meanwhile, in any room (a hold lasts one
round trip). If Redis trimmed events of a stream this node had not yet
read, the reader tells that stream's room (`missed`): its clients' view has
a hole.
"""

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from chatbox.chat.room import RoomError
from chatbox.cluster import scripts
from chatbox.cluster.keys import Keys
from chatbox.cluster.link import RedisLink

__all__ = ["EventReader", "Handler"]

READ_BATCH = 1000
READ_BLOCK_MS = 1000
RETRY_SECONDS = 0.25

# Called with a stream entry's id and fields; returns False to hold there.
Handler = Callable[[bytes, dict[bytes, bytes]], bool]


def _stream_id(raw: bytes) -> tuple[int, int]:
    millis, _, sequence = raw.partition(b"-")
    return int(millis), int(sequence or 0)


def _ignore(entry_id: bytes, fields: dict[bytes, bytes]) -> bool:
    return True


class _Stream:
    """One followed stream: where it is read up to, and whose it is."""

    __slots__ = ("entries_read", "handle", "key", "missed", "positioned", "read_from")

    def __init__(
        self,
        key: bytes,
        handle: Handler,
        positioned: Callable[[], None],
        missed: Callable[[], None],
    ) -> None:
        self.key = key
        self.handle = handle
        self.positioned = positioned
        self.missed = missed
        self.read_from: bytes | None = None  # the last entry received
        self.entries_read = 0  # the stream's entries-added at read_from


class EventReader:
    log = Logger()

    def __init__(self, link: RedisLink, keys: Keys, clock: Any) -> None:
        self._link = link
        self._keys = keys  # the default room's
        self._clock = clock
        self._streams: dict[bytes, _Stream] = {}
        self._wake_key: bytes | None = None
        self._wake: Callable[[], object] = lambda: None

        self._reading = False
        self._blocked = False  # an XREAD is out
        self._came_back = False
        self._backlog: deque[tuple[_Stream, bytes, list[bytes]]] = deque()
        self._held = False
        self._drained: Deferred[None] | None = None

    def attach(
        self,
        handle: Handler,
        positioned: Callable[[], None],
        missed: Callable[[], None],
    ) -> None:
        """Follow the default room's stream (from its end, once started)."""
        self.follow(self._keys.events, handle, positioned, missed)

    def wake_with(self, key: str, wake: Callable[[], object]) -> None:
        """Name this node's wake-up stream, and how to add to it (a command
        on another connection: this one is blocked when it matters)."""
        self._wake_key = key.encode()
        self._wake = wake
        self._streams[self._wake_key] = _Stream(
            self._wake_key, _ignore, lambda: None, lambda: None
        )
        self._streams[self._wake_key].read_from = b"0-0"

    def follow(
        self,
        stream: str,
        handle: Handler,
        positioned: Callable[[], None],
        missed: Callable[[], None],
        at: tuple[bytes, int] | None = None,
    ) -> None:
        """Hand `handle` each event of `stream` in order, from `at` (the
        stream's last id and entries-added when the room was loaded, read in
        the same step as the node's claim to follow it), or from its end as
        the reader first finds it. `positioned` is called once the reader
        knows where it starts; `missed` when events it had not read were
        trimmed while it was away."""
        key = stream.encode()
        followed = self._streams[key] = _Stream(key, handle, positioned, missed)
        if at is not None:
            followed.read_from, followed.entries_read = at
            positioned()
        if self._blocked and self._wake_key is not None:
            self._wake()

    def unfollow(self, stream: str) -> None:
        """Hand over nothing more from `stream`; an XREAD already out may
        still bring its entries, which are dropped."""
        self._streams.pop(stream.encode(), None)
        if self._held and self._backlog and self._backlog[0][0].key == stream.encode():
            self._held = False
            self._dispatch()

    @property
    def up(self) -> bool:
        return self._link.up

    def following(self) -> int:
        """How many rooms' streams this node reads."""
        return sum(1 for key in self._streams if key != self._wake_key)

    def positioned(self, stream: str | None = None) -> bool:
        """Reading `stream` (the default room's) from a known place."""
        followed = self._streams.get((stream or self._keys.events).encode())
        return followed is not None and followed.read_from is not None

    def passed(self, event_id: bytes, stream: str | None = None) -> bool:
        """Whether `stream` (the default room's) has been read up to `event_id`."""
        followed = self._streams.get((stream or self._keys.events).encode())
        return (
            followed is not None
            and followed.read_from is not None
            and _stream_id(followed.read_from) >= _stream_id(event_id)
        )

    def start(self) -> None:
        self._link.on_up(self._reconnected)
        self._link.start()
        self._reading = True
        reading = Deferred.fromCoroutine(self._follow())
        reading.addErrback(lambda f: self.log.failure("the event reader stopped", f))

    def stop(self) -> "Deferred[None]":
        self._reading = False
        return self._link.stop()

    def resume(self) -> None:
        """Go on past the event the handler held at, handing it over again."""
        self._held = False
        self._dispatch()

    async def _follow(self) -> None:
        while self._reading:
            try:
                unplaced = [s for s in self._streams.values() if s.read_from is None]
                if unplaced:
                    await self._place(unplaced)
                elif self._came_back:
                    await self._check_for_gaps()
                reading = [s for s in self._streams.values() if s.read_from]
                if not reading:
                    await deferLater(self._clock, RETRY_SECONDS, lambda: None)
                    continue
                self._blocked = True
                try:
                    reply = await self._link.execute(
                        "XREAD",
                        "COUNT",
                        READ_BATCH,
                        "BLOCK",
                        READ_BLOCK_MS,
                        "STREAMS",
                        *[s.key for s in reading],
                        *[s.read_from for s in reading],
                    )
                finally:
                    self._blocked = False
            except RoomError:
                if self._reading:
                    await deferLater(self._clock, RETRY_SECONDS, lambda: None)
                continue
            if not reply:
                continue
            for key, entries in reply:
                followed = self._streams.get(key)
                if followed is None:
                    continue  # unfollowed while the XREAD was out
                # Followed again since, from further on: only what is new.
                entries = [e for e in entries if _after(e[0], followed.read_from)]
                if not entries:
                    continue
                followed.read_from = entries[-1][0]
                followed.entries_read += len(entries)
                self._backlog.extend((followed, i, flat) for i, flat in entries)
            self._dispatch()
            if self._backlog:
                self._drained = Deferred()
                await self._drained

    def _stream_state(self, streams: list[_Stream]) -> Deferred:
        return self._link.eval(scripts.STREAM_STATE, [s.key for s in streams], [])

    async def _place(self, streams: list[_Stream]) -> None:
        """Start reading these streams from their end."""
        states = await self._stream_state(streams)
        for followed, (newest, added, _) in zip(streams, states, strict=True):
            if self._streams.get(followed.key) is followed:
                followed.read_from, followed.entries_read = newest, added
                followed.positioned()

    def _reconnected(self) -> None:
        self._came_back = True

    async def _check_for_gaps(self) -> None:
        """After a reconnect: if Redis trimmed events this node had not read
        (it was away while more than the stream holds went by), its clients
        in that room missed joins, leaves or messages."""
        streams = [s for s in self._streams.values() if s.key != self._wake_key]
        states = await self._stream_state(streams) if streams else []
        self._came_back = False
        for followed, (_, added, kept) in zip(streams, states, strict=True):
            if added - followed.entries_read > kept:
                followed.missed()

    def _dispatch(self) -> None:
        backlog = self._backlog
        while backlog and not self._held:
            followed, entry_id, flat = backlog[0]
            entry = backlog.popleft()
            if self._streams.get(followed.key) is not followed:
                continue  # its room was unloaded
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            if not followed.handle(entry_id, fields):
                backlog.appendleft(entry)
                self._held = True
                return
        if not backlog and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)


def _after(entry_id: bytes, read_from: bytes | None) -> bool:
    return read_from is None or _stream_id(entry_id) > _stream_id(read_from)
