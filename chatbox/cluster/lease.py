# -*- test-case-name: tests.unit.test_cluster_units -*-
"""A node's lease on its place in the cluster, kept alive by a heartbeat.

One lease per node, whatever rooms it follows: HEARTBEAT and RETIRE reap a
node's names in the default room and in every named room it follows (its
`following` set, chatbox.cluster.keys), so rooms add no heartbeats.

A node that dies cannot say so, and its nicknames must not stay taken for
ever: so each node holds a lease in Redis and renews it every `lease / 6`
seconds for `0.6 * lease`, in Redis' clock (the nodes' clocks need not
agree). Whichever node's heartbeat first finds a lease run out releases that
node's names, with a leave each (one script, so exactly once). So a node
that dies has its names freed within `0.6 + 1/6` of `lease` (plus a
script's time), and a node survives two missed renewals (the third comes at
half the lease).

A node that finds its own lease gone has had its names released and
perhaps handed to others: every room hears of it (`lost`) and closes its
registered connections (1012) so their clients register again, and the
lease is sought again at once.

The heartbeat also brings back how many messages the history holds, which
the room reports.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatbox.chat.room import RoomError
from chatbox.cluster import scripts
from chatbox.cluster.commands import Commands
from chatbox.cluster.keys import STREAM_LENGTH
from chatbox.wire.clock import Timestamps

__all__ = ["Lease", "Watcher"]


class Watcher(NamedTuple):
    renewed: Callable[[int, bool], None]
    lost: Callable[[int], None]


class Lease:
    log = Logger()

    def __init__(
        self, commands: Commands, clock: Any, node: str, seconds: float = 15.0
    ) -> None:
        self.node = node
        self.seconds = seconds
        self.held = False
        self._commands = commands
        self._clock = clock
        self._lease_ms = int(seconds * 1000 * 0.6)
        self._beat_every = seconds / 6
        self._timestamps = Timestamps(clock.seconds)
        self._beating = False
        self._heart = LoopingCall(self.beat)
        self._heart.clock = clock
        # One lease for the node, however many rooms it follows: each
        # room watches it.
        self._watchers: list[Watcher] = []
        self._waiting: list[Deferred[None]] = []

    def watch(
        self, renewed: Callable[[int, bool], None], lost: Callable[[int], None]
    ) -> "Watcher":
        """After each heartbeat: `renewed(messages, gained)`, gained being
        whether the lease was not held before; or `lost(messages)` when Redis
        had already released this node (and so its names in every room).
        `messages` is the default room's history size. Returns what
        `unwatch` takes."""
        watcher = Watcher(renewed, lost)
        self._watchers.append(watcher)
        return watcher

    def unwatch(self, watcher: "Watcher") -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    def when_held(self) -> "Deferred[None]":
        """Fires once the lease is held (at once if it is)."""
        if self.held:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting.append(waiter)
        return waiter

    def start(self) -> None:
        self._commands.on_up(self.beat)  # which is how a lease is first had
        self._heart.start(self._beat_every, now=False)

    def beat(self) -> None:
        """Renew the lease (or seek it), and release the names of nodes whose
        lease ran out; skipped while one is on its way or Redis is down."""
        if self._beating or not self._commands.up:
            return
        self._beating = True
        beat = self._commands.run(
            scripts.HEARTBEAT,
            self.node,
            self._lease_ms,
            *self._timestamps.now(),
            STREAM_LENGTH,
            "0" if self.held else "1",
        )

        def answered(result: list[int]) -> None:
            held, released, messages = result
            if released:
                self.log.info(
                    "released {count} nickname(s) of nodes whose lease ran out",
                    count=released,
                )
            if held:
                gained = not self.held
                self.held = True
                for watcher in list(self._watchers):
                    watcher.renewed(messages, gained)
                waiting, self._waiting = self._waiting, []
                for waiter in waiting:
                    waiter.callback(None)
            else:
                self.held = False
                for watcher in list(self._watchers):
                    watcher.lost(messages)
                self._clock.callLater(0, self.beat)  # join again at once

        def failed(failure: Failure) -> None:
            failure.trap(RoomError)
            self.log.warn("heartbeat failed: {error}", error=failure.value)

        def settled(_: object) -> None:
            self._beating = False

        beat.addCallbacks(answered, failed)
        beat.addBoth(settled)

    def retire(self) -> "Deferred[int]":
        """Leave the cluster cleanly: stop beating, and release this node's
        names (with their leaves) and its lease in one script. Fires with
        how many names were released; the lease counts as gone either way
        (if the script failed, it runs out)."""
        if self._heart.running:
            self._heart.stop()
        retired = self._commands.run(
            scripts.RETIRE, self.node, *self._timestamps.now(), STREAM_LENGTH
        )

        def gone(result: object) -> object:
            self.held = False
            return result

        return retired.addBoth(gone)
