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

One reader per node, on one connection of its own (XREAD blocks it), reads
every room the node has loaded; a room it has not loaded costs it nothing.
It blocks on two streams only, whatever the number of rooms: the default
room's (every node reads it) and the node's bell (`Keys.bell_of`). Every
script that adds an event to a named room also adds, in the same step, an
entry naming that room's stream to the bell of each node that follows the
room. The reader reads the bell like any stream, and then just the streams
it named, each from its own last entry, without blocking.

Why not one XREAD naming every followed stream: Redis' cost of a blocking
XREAD grows with the streams it names (measured on Redis 7.0: about 1 ms of
Redis' one CPU per XREAD over 1,000 streams, 0.14 ms over 100, 14 us over
one), and a busy node issues one per batch of events, so a node with a
thousand quiet rooms would spend Redis' time on them at every message of its
one busy room. The bell costs one XADD per follower per event, within the
script that writes the event, and one more XREAD per batch. bench/cluster.py
--rooms (two nodes, one busy room, Redis CPU per message; a loaded 2-core
machine, so rough): with 1,000 idle rooms loaded per node, one XREAD over
every stream cost +43% at capacity and +111% at 200 messages/s over no idle
room; the bell +0% and +16%; with no idle room the bell costs some 8-16%
more than the one XREAD. (A set of streams with news that the reader
emptied, a write of its own per batch, measured worse than either.) A
connection per room was never an option: a thousand rooms would be a
thousand connections per node.

News is never lost: the bell is a stream, read from where the reader left
it; a read that failed (Redis down, a reply lost) or a reconnect marks
every followed room to be read again (a bell trimmed while the node was
away is covered so). A room followed or followed again is read once at
once, covering events from before the node was (again) a follower.

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


def _after(entry_id: bytes, read_from: bytes | None) -> bool:
    return read_from is None or _stream_id(entry_id) > _stream_id(read_from)


def _trimmed_past(
    followed: "_Stream",
    newest: bytes,
    added: int,
    kept: int,
    oldest: bytes,
    deleted: bytes,
    xdels: int = 0,
) -> bool:
    """Whether entries of a stream that `followed` had not read were trimmed.

    Trimming alone removes entries neither kept nor XDELed: the count of
    entries trimmed ever is `added - kept - xdels`, the scripts counting
    every entry they XDEL (an operator's DELETE, the retention purge). If it
    has not grown since the reader last looked, nothing it had not read was
    trimmed, however many entries the purge removed meanwhile.
    Trimming takes the oldest entries: while one at or before where the
    reader is still stands, nothing after it was trimmed. Otherwise count:
    the entries added since must all be kept. Entries removed by XDEL after
    the reader's place (the count of them is not known) keep the count from
    telling: then the reader assumes the worst (its clients register again).
    """
    trimmed = added - kept - xdels
    if followed.trimmed is not None and trimmed <= followed.trimmed:
        return False
    read_from = followed.read_from or b"0-0"
    if kept and _stream_id(oldest) <= _stream_id(read_from):
        return False
    if _stream_id(deleted) > _stream_id(read_from):
        return added > followed.entries_read
    return added - followed.entries_read > kept


def _trimmed_count(state: list) -> int | None:
    """Entries trimmed from a stream ever, from its STREAM_STATE."""
    _, added, kept, _, _, *xdels = state
    return int(added) - int(kept) - int(xdels[0]) if xdels else None


def _ignore(entry_id: bytes, fields: dict[bytes, bytes]) -> bool:
    return True


class _Stream:
    """One followed stream: where it is read up to, and whose it is."""

    __slots__ = (
        "entries_read",
        "handle",
        "key",
        "missed",
        "on_news",
        "positioned",
        "read_from",
        "trimmed",
    )

    def __init__(
        self,
        key: bytes,
        handle: Handler,
        positioned: Callable[[], None],
        missed: Callable[[], None],
        on_news: bool,
    ) -> None:
        self.key = key
        self.handle = handle
        self.positioned = positioned
        self.missed = missed
        self.on_news = on_news  # read when the bell says so, not blocked on
        self.read_from: bytes | None = None  # the last entry received
        self.entries_read = 0  # the stream's entries-added at read_from
        # Entries trimmed from the stream ever, when the reader last looked
        # (None: not known, so no help deciding what trimming took).
        self.trimmed: int | None = None


class EventReader:
    log = Logger()

    def __init__(self, link: RedisLink, keys: Keys, clock: Any) -> None:
        self._link = link
        self._keys = keys  # the default room's
        self._clock = clock
        self._streams: dict[bytes, _Stream] = {}
        self._bell: bytes | None = None
        self._to_read: set[bytes] = set()  # streams with news not yet read

        self._reading = False
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

    def listen_to(self, node: str) -> None:
        """Block on node `node`'s bell, and read the rooms it names."""
        self._bell = self._keys.bell_of(node).encode()
        bell = _Stream(self._bell, _ignore, lambda: None, lambda: None, False)
        bell.read_from = b"0-0"
        self._streams[self._bell] = bell

    def follow(
        self,
        stream: str,
        handle: Handler,
        positioned: Callable[[], None],
        missed: Callable[[], None],
        at: tuple[bytes, int] | tuple[bytes, int, int] | None = None,
    ) -> None:
        """Hand `handle` each event of `stream` in order. Without `at` (the
        default room): blocked on, from its end as the reader first finds
        it. With `at` (a named room: its stream's last id, entries-added and
        perhaps entries trimmed so far, read in the same step as the node
        became a follower): read on news, from there. `positioned` is called
        once the reader knows where it starts; `missed` when events it had
        not read were trimmed while it was away."""
        key = stream.encode()
        on_news = at is not None
        followed = self._streams[key] = _Stream(
            key, handle, positioned, missed, on_news
        )
        if at is not None:
            followed.read_from, followed.entries_read = at[0], at[1]
            followed.trimmed = at[2] if len(at) > 2 else None  # type: ignore[misc]
            positioned()
            self._to_read.add(key)

    def read_again(self, stream: str) -> None:
        """Read `stream` at the next turn, news or not (its room has just
        become a follower again, after a lost lease)."""
        if stream.encode() in self._streams:
            self._to_read.add(stream.encode())

    def unfollow(self, stream: str) -> None:
        """Hand over nothing more from `stream`; a read already out may
        still bring its entries, which are dropped."""
        key = stream.encode()
        self._streams.pop(key, None)
        self._to_read.discard(key)
        if self._held and self._backlog and self._backlog[0][0].key == key:
            self._held = False
            self._dispatch()

    @property
    def up(self) -> bool:
        return self._link.up

    def following(self) -> int:
        """How many rooms' streams this node reads."""
        return sum(1 for key in self._streams if key != self._bell)

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
                await self._next()
            except RoomError:
                # Rooms rung for but perhaps not read are read again.
                self._to_read.update(k for k, s in self._streams.items() if s.on_news)
                if self._reading:
                    await deferLater(self._clock, RETRY_SECONDS, lambda: None)
                continue
            self._dispatch()
            if self._backlog:
                self._drained = Deferred()
                await self._drained

    async def _next(self) -> None:
        """One XREAD: of the streams with news (and the default room's and
        the bell, without waiting), or, with no news, blocking on the
        default room's stream and the bell."""
        blocking = [s for s in self._streams.values() if not s.on_news]
        news = [self._streams[k] for k in self._to_read if k in self._streams]
        self._to_read = set()
        if not news and not blocking:
            await deferLater(self._clock, RETRY_SECONDS, lambda: None)
            return
        brought = await self._read(blocking + news, block=not news)
        for followed in news:
            if brought.get(followed.key, 0) >= READ_BATCH:
                self._to_read.add(followed.key)  # more to come

    async def _read(self, streams: list[_Stream], block: bool) -> dict[bytes, int]:
        """One XREAD; its entries go to the backlog. Returns how many
        entries each stream brought."""
        waiting = ["BLOCK", READ_BLOCK_MS] if block else []
        reply = await self._link.execute(
            "XREAD",
            "COUNT",
            READ_BATCH,
            *waiting,
            "STREAMS",
            *[s.key for s in streams],
            *[s.read_from for s in streams],
        )
        brought: dict[bytes, int] = {}
        for key, entries in reply or ():
            brought[key] = len(entries)
            followed = self._streams.get(key)
            if followed is None:
                continue  # unfollowed while the XREAD was out
            # Followed again since, from further on: only what is new.
            entries = [e for e in entries if _after(e[0], followed.read_from)]
            if not entries:
                continue
            followed.read_from = entries[-1][0]
            followed.entries_read += len(entries)
            if key == self._bell:
                # Each ring names a room's stream: read it next.
                for _, flat in entries:
                    self._to_read.update(flat[1::2])
            else:
                self._backlog.extend((followed, i, flat) for i, flat in entries)
        return brought

    def _stream_state(self, streams: list[_Stream]) -> Deferred:
        return self._link.eval(scripts.STREAM_STATE, [s.key for s in streams], [])

    async def _place(self, streams: list[_Stream]) -> None:
        """Start reading these streams from their end."""
        states = await self._stream_state(streams)
        for followed, state in zip(streams, states, strict=True):
            if self._streams.get(followed.key) is followed:
                followed.read_from, followed.entries_read = state[0], state[1]
                followed.trimmed = _trimmed_count(state)
                followed.positioned()

    def _reconnected(self) -> None:
        self._came_back = True

    async def _check_for_gaps(self) -> None:
        """After a reconnect: if Redis trimmed events this node had not read
        (it was away while more than the stream holds went by), its clients
        in that room missed joins, leaves or messages. Every named room is
        read again too: a ring read just before the connection dropped may
        not have been followed by its read."""
        streams = [s for s in self._streams.values() if s.key != self._bell]
        states = await self._stream_state(streams) if streams else []
        self._came_back = False
        self._to_read.update(s.key for s in streams if s.on_news)
        for followed, state in zip(streams, states, strict=True):
            if _trimmed_past(followed, *state):
                followed.missed()
            followed.trimmed = _trimmed_count(state)

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
