# -*- test-case-name: tests.unit.test_cluster_units -*-
"""Follows the cluster's event stream and hands each event on, in order.

Every change to the cluster's state is written, by the same script, as one
event in one Redis stream. Why a stream and not pub/sub: pub/sub forgets
what a node missed while its connection was down, so a Redis restart would
silently lose joins and leaves. A stream keeps them: every node reads it
from the last entry it handled, so after any reconnect it carries on with
the next event, exactly once, in the one order Redis wrote them (which is
each originating node's order too).

The reader has a connection of its own, since XREAD blocks it. The room
decides what an event means; it may ask the reader to hold at an event
(until a claim's reply has gone out) and to resume later, and the reader
reads no further meanwhile. If Redis trimmed events this node had not yet
read, the reader says so (`missed`): its clients' view has a hole.
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


class EventReader:
    log = Logger()

    def __init__(self, link: RedisLink, keys: Keys, clock: Any) -> None:
        self._link = link
        self._keys = keys
        self._clock = clock
        self._handle: Handler = lambda entry_id, fields: True
        self._positioned: Callable[[], None] = lambda: None
        self._missed: Callable[[], None] = lambda: None

        self._reading = False
        self._read_from: bytes | None = None  # the last entry received
        self._entries_read = 0  # the stream's entries-added at _read_from
        self._came_back = False
        self._backlog: deque[tuple[bytes, list[bytes]]] = deque()
        self._held = False
        self._drained: Deferred[None] | None = None

    def attach(
        self,
        handle: Handler,
        positioned: Callable[[], None],
        missed: Callable[[], None],
    ) -> None:
        """`handle` gets each event in order; `positioned` is called once the
        reader knows where in the stream it starts; `missed` when events it
        had not read were trimmed while it was away."""
        self._handle = handle
        self._positioned = positioned
        self._missed = missed

    @property
    def up(self) -> bool:
        return self._link.up

    @property
    def positioned(self) -> bool:
        """Reading the stream from a known place."""
        return self._read_from is not None

    def passed(self, event_id: bytes) -> bool:
        """Whether the stream has already been read up to `event_id`."""
        return self._read_from is not None and (
            _stream_id(self._read_from) >= _stream_id(event_id)
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
                if self._read_from is None:
                    newest, added, _ = await self._stream_state()
                    self._read_from, self._entries_read = newest, added
                    self._positioned()
                elif self._came_back:
                    await self._check_for_gap()
                reply = await self._link.execute(
                    "XREAD",
                    "COUNT",
                    READ_BATCH,
                    "BLOCK",
                    READ_BLOCK_MS,
                    "STREAMS",
                    self._keys.events,
                    self._read_from,
                )
            except RoomError:
                if self._reading:
                    await deferLater(self._clock, RETRY_SECONDS, lambda: None)
                continue
            if not reply:
                continue
            entries = reply[0][1]
            self._read_from = entries[-1][0]
            self._entries_read += len(entries)
            self._backlog.extend(entries)
            self._dispatch()
            if self._backlog:
                self._drained = Deferred()
                await self._drained

    def _stream_state(self) -> Deferred:
        return self._link.eval(scripts.STREAM_STATE, self._keys, [])

    def _reconnected(self) -> None:
        self._came_back = True

    async def _check_for_gap(self) -> None:
        """After a reconnect: if Redis trimmed events this node had not read
        (it was away while more than the stream holds went by), its clients
        missed joins, leaves or messages."""
        _, added, kept = await self._stream_state()
        self._came_back = False
        if added - self._entries_read > kept:
            self._missed()

    def _dispatch(self) -> None:
        backlog = self._backlog
        while backlog and not self._held:
            entry_id, flat = backlog[0]
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            entry = backlog.popleft()
            if not self._handle(entry_id, fields):
                backlog.appendleft(entry)
                self._held = True
                return
        if not backlog and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)
