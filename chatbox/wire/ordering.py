# -*- test-case-name: tests.unit.test_ordering -*-
"""The order of one connection's requests and replies (docs/PROTOCOL.md).

Each rule below is one of PROTOCOL.md's ordering rules (in "How chatbox
reads the places this contract leaves open"); tests/unit/test_ordering.py
tests them one by one with plain Deferreds.

- Nothing waits behind a `send`, except a `get`: send replies come when the
  room has stored each message, and a later `name` may be answered first.
- A `get` waits until none of the connection's sends is in flight, so it
  contains every earlier one.
- A `name` the room cannot decide at once (a cluster's round trip) holds
  the requests that arrive after it; they are handled, in order, once its
  reply is out. At most MAX_WAITING_REQUESTS (and MAX_WAITING_BYTES) wait:
  past that a request is handled at once, as one over the rate limit.
- `get`s are answered one at a time, in order, each once the client has
  read what it was sent before.
- While a `get` is answered, every other frame for the client is held and
  follows the reply, so nothing newer than its snapshot comes first; held
  frames beyond the output limit are reported, for the connection to be
  cut off.

Nothing here knows about WebSockets or the room: the connection
(chatbox.wire.protocol) hands in callables and Deferreds, so each rule is
testable without a transport or a reactor.
"""

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, DeferredLock, succeed

__all__ = ["MAX_WAITING_BYTES", "MAX_WAITING_REQUESTS", "Ordering"]

# Requests held back behind a `name` request still in flight; past this a
# client is pipelining far beyond any real use and is told to slow down.
MAX_WAITING_REQUESTS = 256
# ...and at most this many bytes of them (256 frames of 64 KiB would be 16 MiB
# held for one connection).
MAX_WAITING_BYTES = 1024 * 1024

Frame = TypeVar("Frame")


class Ordering(Generic[Frame]):
    """One connection's ordering state: the `name` it waits on, its sends in
    flight, its `get`s, and the frames held behind a `get` reply.

    `handle(payload, overflowing)` carries out one request frame;
    `overflowing` is True for a frame that found the waiting queue full.
    `write(frame)` puts one outgoing frame on the wire. `drained()` fires
    once the client has read what it was sent. `too_much_held(size)` is
    told, for each frame held past `hold_limit` bytes (0: no limit), how
    many bytes are held.
    """

    def __init__(
        self,
        handle: Callable[[bytes, bool], None],
        write: Callable[[Frame], None],
        drained: Callable[[], "Deferred[None]"],
        frame_size: Callable[[Frame], int],
        hold_limit: int = 0,
        too_much_held: Callable[[int], None] = lambda size: None,
        max_waiting: int = MAX_WAITING_REQUESTS,
        max_waiting_bytes: int = MAX_WAITING_BYTES,
    ) -> None:
        self._handle = handle
        self._write = write
        self._drained = drained
        self._frame_size = frame_size
        self._hold_limit = hold_limit
        self._too_much_held = too_much_held
        self._max_waiting = max_waiting
        self._max_waiting_bytes = max_waiting_bytes
        self._naming = False  # a `name` request is in flight
        self._waiting: deque[bytes] = deque()
        self._waiting_bytes = 0
        self._sends_in_flight = 0
        self._send_waiters: list[Deferred[None]] = []
        # One `get` at a time; while one is being answered, every other frame
        # for this client waits in _held, so the reply comes before anything
        # that happened after its snapshot.
        self._gets = DeferredLock()
        self._held: list[Frame] | None = None
        self._held_bytes = 0

    # -- requests in --

    def request(self, payload: bytes) -> None:
        """A request frame arrived: handled now, or queued behind a `name`."""
        if self._naming:
            if (
                len(self._waiting) < self._max_waiting
                and self._waiting_bytes + len(payload) <= self._max_waiting_bytes
            ):
                self._waiting.append(payload)
                self._waiting_bytes += len(payload)
                return
            self._handle(payload, True)
            return
        self._handle(payload, False)

    def name(self, outcome: "Deferred[object]") -> None:
        """Hold later requests until a `name` request's outcome has fired.

        Call it after adding the callbacks that write the reply, so the
        reply is out before the held requests are handled. An outcome that
        has fired already (a single process decides at once) holds nothing.
        """
        if outcome.called:
            return
        self._naming = True
        outcome.addBoth(self._name_settled)

    def _name_settled(self, _: object) -> None:
        self._naming = False
        while self._waiting and not self._naming:
            payload = self._waiting.popleft()
            self._waiting_bytes -= len(payload)
            self._handle(payload, False)

    def send_started(self) -> None:
        """A `send` is in flight: `get`s wait until `send_settled`."""
        self._sends_in_flight += 1

    def send_settled(self, _: object = None) -> None:
        """The `send` is stored or failed, and its reply written. An
        addBoth callback: it ends the chain with None."""
        self._sends_in_flight -= 1
        if not self._sends_in_flight:
            waiters, self._send_waiters = self._send_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _sends_settled(self) -> "Deferred[None]":
        if not self._sends_in_flight:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._send_waiters.append(waiter)
        return waiter

    def get(
        self,
        answer: Callable[[], Awaitable[object]],
        wanted: Callable[[], bool],
    ) -> "Deferred[None]":
        """Answer a `get` in its turn: after the `get`s before it, once no
        send is in flight (so it sees them) and the client has read what it
        was sent (so a client that does not read cannot make the server
        build reply after reply). `wanted()` says whether the client is
        still there to answer; `answer()` writes the reply with `write`,
        past the frames held meanwhile. Fires when done; fails as `answer`
        does."""
        return self._gets.run(
            lambda: Deferred.fromCoroutine(self._answer(answer, wanted))
        )

    async def _answer(
        self, answer: Callable[[], Awaitable[object]], wanted: Callable[[], bool]
    ) -> None:
        await self._sends_settled()
        await self._drained()
        if not wanted():
            return  # Gone while waiting.
        self._held = []
        try:
            await answer()
        finally:
            self._release_held()

    # -- frames out --

    def deliver(self, frame: Frame) -> None:
        """Write a frame for this client now, or after the `get` reply being
        written."""
        if self._held is not None:
            self._held.append(frame)
            self._held_bytes += self._frame_size(frame)
            if self._hold_limit and self._held_bytes > self._hold_limit:
                self._too_much_held(self._held_bytes)
        else:
            self._write(frame)

    def _release_held(self) -> None:
        held, self._held = self._held, None
        self._held_bytes = 0
        for frame in held or ():
            self.deliver(frame)
