# -*- test-case-name: tests.unit.test_cluster_units -*-
"""The node's command link, as the room and its lease share it.

The rooms' requests and the lease's heartbeat are scripts on one connection
(so Redis runs them in the order this node sent them), each given its
room's keys: every room a node follows shares the one link. Each is tracked
until it settles, so a closing node can wait for what it already sent
(`flush`) before it retires from the cluster.
"""

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed

from chatbox.cluster.address import RedisAddress
from chatbox.cluster.keys import Keys
from chatbox.cluster.link import RedisLink

__all__ = ["Commands"]


class Commands:
    def __init__(self, link: RedisLink, keys: Keys) -> None:
        self.keys = keys
        self._link = link
        self._in_flight: set[Deferred] = set()

    @property
    def address(self) -> RedisAddress:
        return self._link.address

    @property
    def up(self) -> bool:
        return self._link.up

    def on_up(self, callback: Callable[[], None]) -> None:
        """Call `callback` every time the link (re)connects."""
        self._link.on_up(callback)

    def start(self) -> None:
        self._link.start()

    def stop(self) -> "Deferred[None]":
        return self._link.stop()

    def for_keys(self, keys: Keys) -> "Commands":
        """Commands on the same link for another room's keys (so Redis still
        runs this node's scripts in the order sent, across rooms); each
        tracks its own for flush()."""
        return Commands(self._link, keys)

    def run(self, script: bytes, *args: Any) -> Deferred:
        """Run a script; the Deferred is tracked until settled, for flush()."""
        running = self._link.eval(script, self.keys, args)
        self._in_flight.add(running)

        def settled(result: object) -> object:
            self._in_flight.discard(running)
            return result

        return running.addBoth(settled)

    def execute(self, *args: Any) -> Deferred:
        """One plain command, for what no script may do (CONFIG,
        BGREWRITEAOF); not tracked for flush()."""
        return self._link.execute(*args)

    def flush(self) -> "Deferred[None]":
        """Fires when every script sent so far has settled, however."""
        if not self._in_flight:
            return succeed(None)
        waiting = DeferredList(list(self._in_flight), consumeErrors=True)
        return waiting.addCallback(lambda _: None)
