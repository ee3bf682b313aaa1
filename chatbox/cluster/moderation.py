# -*- test-case-name: tests.test_cluster_moderation -*-
"""A cluster's moderation state (bans, mutes, reserved names, slow mode),
kept in Redis so every node enforces the same orders.

The orders are the truth: one Redis stream (`Keys.orders`), in the one order
every node applies them, each node its own included. A node polls it from
the last order it applied, every POLL_SECONDS, with a script that reads
without blocking (the command link is shared with every room's requests,
and a blocked read would hold them back), and hands each order to `apply`
once, in stream order. Orders are rare and small, so a poll costs Redis one
short script per node four times a second, and an order is applied on every
node within POLL_SECONDS plus a round trip.

The stream is capped (ORDERS_LENGTH, approximately), so a node away for
more orders than it keeps starts again from the snapshot (`Keys.moderation`):
the state with every order up to one stream id (`through`) applied, which
SUBMIT writes in the same step as it appends the order, from the submitting
node's state (`snapshot()`). Loading is the snapshot plus the orders after
`through`, which the first poll applies, so any node's snapshot is a true
one; SUBMIT writes it only if that node had applied every order before its
own, so the stored snapshot only ever moves forward (one from a node a few
orders behind would replace a newer one, and could name a `through` the
capped stream has dropped). A node submitting first catches up, so that is
the rule; a submit that races another node's leaves the stored snapshot
as it was, for the next one to move on.

A Redis outage loses nothing: SUBMIT's reply comes after the append-only
file has the order (the README's `appendfsync always`), and a node carries on
polling from its last id when Redis is back. A submit whose reply was lost
(RedisInDoubt) may or may not have appended its order; the caller is told
so, and an order applied twice must do no harm (a sanction has its id).
"""

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import implementer

from chatbox.chat.moderation import IModerationStore, Order, OrderError
from chatbox.chat.room import RoomError
from chatbox.cluster import scripts
from chatbox.cluster.commands import Commands
from chatbox.cluster.keys import ORDERS_LENGTH
from chatbox.wire import codec

__all__ = ["POLL_SECONDS", "RedisModeration"]

POLL_SECONDS = 0.25
# Orders one poll reads at most; a node further behind reads on at once.
POLL_BATCH = 500


def _snapshot_of(raw: bytes | None) -> tuple[bytes, int, dict]:
    """A stored snapshot's (through, seen, state); none is the empty state
    before any order."""
    if raw is None:
        return b"0-0", 0, {}
    record = codec.decode(raw)
    return record["through"].encode(), int(record["seen"]), record["state"]


@implementer(IModerationStore)
class RedisModeration:
    """IModerationStore on a cluster node's command link."""

    log = Logger()

    def __init__(
        self,
        node: Any,
        clock: Any,
        snapshot: Callable[[], dict] | None = None,
        restore: Callable[[dict], None] | None = None,
    ) -> None:
        """`node` is the node's default RedisRoom, whose command link this
        shares. `snapshot` gives the state with every order applied so far
        (Moderation.snapshot), which a submit stores for nodes that fall
        behind; `restore` replaces the state with a loaded one
        (Moderation.restore) when this node fell behind (orders trimmed
        past it, or lost by Redis). Without them no snapshot is written,
        and a node that fell behind can only log that it did."""
        self._commands: Commands = node.commands_for("")
        self._clock = clock
        self._through = b"0-0"  # the last order applied here
        self._seen = 0  # the stream's entries-added at `_through`
        self._apply: Callable[[Order], None] = lambda order: None
        self._snapshot = snapshot
        self._restore = restore
        self._lock = DeferredLock()
        self._poller = LoopingCall(self._tick)
        self._poller.clock = clock
        # This node's submitted orders not yet applied here, by stream id.
        self._waiters: dict[bytes, Deferred[None]] = {}
        self._failing = False
        self._closed = False
        if snapshot is None:
            self.log.warn("moderation: no snapshot source; none is written to redis")

    # -- IModerationStore --

    def load(self) -> "Deferred[dict]":
        """The snapshot's state ({} before any order); orders after it are
        applied by the first poll once started. Waits for Redis (retrying
        every POLL_SECONDS) rather than failing: the caller may add a
        timeout."""
        return Deferred.fromCoroutine(self._load())

    async def _load(self) -> dict:
        while True:
            try:
                raw = await self._commands.run(scripts.MODERATION_LOAD)
            except RoomError as e:
                if self._closed:
                    raise
                self._note_failure(e)
                await deferLater(self._clock, POLL_SECONDS, lambda: None)
                continue
            self._through, self._seen, state = _snapshot_of(raw)
            return state

    def start(self, apply: Callable[[Order], None]) -> None:
        """From now on hand every order (this node's and others') to `apply`,
        once, in the cluster's order. An order `apply` refuses (OrderError)
        is logged, and fails its submit if it is this node's."""
        self._apply = apply
        self._poller.start(POLL_SECONDS, now=True)

    def submit(self, order: Order) -> "Deferred[None]":
        """Append `order` to the cluster's orders; fires once Redis has it
        and this node has applied it. Fails with RoomError (RedisInDoubt:
        perhaps appended), or with what `apply` raised for it (the order is
        in the stream then, and every node refuses it alike)."""
        return Deferred.fromCoroutine(self._submit(order))

    async def _submit(self, order: Order) -> None:
        # Apply every order before this one first, so the snapshot stored
        # with it is the state right before it.
        await self._poll()
        state = self._snapshot() if self._snapshot is not None else None
        through = self._through.decode() if state is not None else ""
        record = codec.encode({"through": through, "seen": self._seen, "state": state})
        order_id, _ = await self._commands.run(
            scripts.MODERATION_SUBMIT,
            codec.encode(order),
            record,
            through,
            ORDERS_LENGTH,
        )
        # Durable now: applied here by the next poll, however long Redis
        # takes to come back if it went away meanwhile.
        applied: Deferred[None] = Deferred()
        self._waiters[order_id] = applied
        polled = Deferred.fromCoroutine(self._poll())
        polled.addErrback(lambda failure: self._note_failure(failure.value))
        await applied

    def close(self) -> "Deferred[None]":
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        self._closed = True
        if self._poller.running:
            self._poller.stop()
        await self._lock.acquire()
        self._lock.release()
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.errback(RoomError("moderation store closed"))

    # -- polling --

    def _tick(self) -> None:
        if self._lock.locked or self._closed:
            return  # a poll is out; the next tick comes soon
        polled = Deferred.fromCoroutine(self._poll())
        polled.addErrback(lambda failure: self._note_failure(failure.value))

    def _note_failure(self, error: BaseException) -> None:
        if not self._failing:
            self._failing = True
            # At start-up the link may not be up yet: worth a line, not a
            # warning (the node's own "joined the chat cluster" says when).
            self.log.info("moderation orders wait for redis: {error}", error=error)
        if not isinstance(error, RoomError):
            self.log.error("moderation poll failed: {error!r}", error=error)

    async def _poll(self) -> None:
        """Apply every order after the last one applied, one poll at a
        time (so each is applied once, in order)."""
        await self._lock.acquire()
        try:
            while await self._poll_once():
                pass
        finally:
            self._lock.release()
        if self._failing:
            self._failing = False
            self.log.info("moderation orders are read again")

    async def _poll_once(self) -> bool:
        """One read; True if there may be more to read at once."""
        reply = await self._commands.run(
            scripts.MODERATION_POLL, self._through, self._seen, POLL_BATCH
        )
        if reply[0] == 0:
            _, added, kept = reply
            await self._fell_behind(int(added), int(kept))
            return True
        entries = reply[1]
        for entry_id, flat in entries:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            self._through = entry_id
            self._seen += 1
            waiter = self._waiters.pop(entry_id, None)
            try:
                self._apply(codec.decode(fields[b"o"]))
            except OrderError as e:
                self.log.warn(
                    "moderation order {id} refused: {error}", id=entry_id, error=e
                )
                if waiter is not None:
                    waiter.errback(e)
            except Exception as e:
                self.log.failure("moderation order {id} not applied", id=entry_id)
                if waiter is not None:
                    waiter.errback(e)
            else:
                if waiter is not None:
                    waiter.callback(None)
        return len(entries) >= POLL_BATCH

    async def _fell_behind(self, added: int, kept: int) -> None:
        """Orders this node had not applied are gone from the stream: start
        again from the snapshot, and the orders kept after it."""
        through, seen, state = _snapshot_of(
            await self._commands.run(scripts.MODERATION_LOAD)
        )
        if seen < added - kept or seen > added:
            # Trimmed past the snapshot too (or the snapshot is of a stream
            # Redis no longer has): what was between is lost to everyone.
            self.log.error(
                "moderation orders were lost (redis kept {kept} of {added}); "
                "going on from the snapshot and the oldest order kept",
                kept=kept,
                added=added,
            )
            through, seen = b"0-0", added - kept
        self.log.warn(
            "moderation: this node fell behind the orders redis keeps; "
            "reloading the snapshot"
        )
        self._through, self._seen = through, seen
        if self._restore is not None:
            self._restore(state)
        else:
            self.log.error("moderation: no way to reload the state here")
