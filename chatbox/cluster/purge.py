# -*- test-case-name: tests.test_cluster_retention -*-
"""The retention purge on a cluster: one node at a time removes expired
messages from Redis, in every room of the cluster.

Every node runs chatbox.chat.retention.PurgeService on its timer, so the
purge must not depend on any one node staying up; and two nodes purging at
once would only double Redis' work. So a purge first takes the purge lease
(`Keys.purge`, SET NX with a time to live of the node's --redis-lease),
renews it while it works, and gives it back when done; a node that finds it
taken fires with None and tries again at its next interval. A node killed
while purging leaves its lease to run out, and the next node whose timer
comes round carries on where it stopped (a purge is idempotent: whatever
has expired and is still there goes). Every EXPIRE call checks the lease
itself, in the same atomic step as its removals, so a node paused past its
lease (a long GC, a frozen VM) cannot purge beside the one that took over.

Rooms: the default room and every name in the cluster's `rooms` set, each
reached through its keys alone (RedisRoom.commands_for): a room no node
follows is purged too, and nothing is loaded or followed for it. Each
room's retention is the node's --retention-days/--retention-messages/
--room-retention (every node of a cluster is started with the same ones).

What goes: the expired entries of `history`, and the `message` entries of
the stream holding their text (XDEL, found in bulk: a room's message
entries are in id order in its stream). No event: clients stopped seeing
them at once (PAGE leaves them out). `msgid` stays, so no id is handed out
again. Readers are not misled by the XDELs (chatbox.cluster.reader: the
scripts count them).

Then Redis is asked to rewrite its persistence, so the text leaves the disk
too: BGREWRITEAOF with appendonly on (the rewritten file holds only what is
kept), else BGSAVE if snapshots are configured. A refusal (a rewrite
already running, CONFIG renamed away) is logged; the next purge asks again.
"""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from chatbox.chat.retention import IPurger, RetentionPolicy
from chatbox.chat.room import RoomError
from chatbox.chat.roomnames import DEFAULT
from chatbox.chat.rooms import Rooms
from chatbox.cluster import scripts
from chatbox.cluster.room import PurgeLeaseLost, RedisRoom, expire_history

__all__ = ["ClusterPurger"]


@implementer(IPurger)
class ClusterPurger:
    log = Logger(namespace="chatbox.retention")

    def __init__(self, rooms: Rooms, reactor: Any) -> None:
        node = rooms.default
        assert isinstance(node, RedisRoom)
        self._node = node
        self._reactor = reactor
        self._commands = node.commands_for(DEFAULT)
        self.lease_ms = int(node.lease_seconds * 1000)

    def purge(
        self, policy: RetentionPolicy, now_ms: int
    ) -> "Deferred[dict[str, int] | None]":
        return Deferred.fromCoroutine(self._purge(policy, now_ms))

    def _lease(self, what: str) -> "Deferred[object]":
        return self._commands.run(
            scripts.PURGE_LEASE, self._node.node, what, self.lease_ms
        )

    async def _purge(
        self, policy: RetentionPolicy, now_ms: int
    ) -> dict[str, int] | None:
        if not await self._lease("take"):
            return None  # another node is purging
        renewing = LoopingCall(self._renew)
        renewing.clock = self._reactor
        renewing.start(self.lease_ms / 3000, now=False)
        try:
            removed = await self._rooms(policy, now_ms)
        finally:
            renewing.stop()
            try:
                await self._lease("release")
            except RoomError as e:
                self.log.warn(
                    "retention purge: could not give the purge lease back "
                    "({error}); it runs out in {s} s",
                    error=e,
                    s=self.lease_ms / 1000,
                )
        if sum(removed.values()):
            await self._rewrite()
        return removed

    def _renew(self) -> None:
        renewed = self._lease("renew")

        def answered(held: object) -> None:
            if not held:
                self.log.warn(
                    "retention purge: node {node} lost the purge lease; "
                    "another node carries on",
                    node=self._node.node,
                )

        renewed.addCallbacks(answered, lambda failure: failure.trap(RoomError))

    async def _rooms(self, policy: RetentionPolicy, now_ms: int) -> dict[str, int]:
        """Every room of the cluster, one after the other; a room Redis
        fails on is logged and the others are purged all the same, then the
        purge fails (PurgeService counts it and tries again)."""
        names = [DEFAULT, *sorted(n.decode() for n in await self._room_names())]
        removed: dict[str, int] = {}
        failed: list[str] = []
        dropped = 0
        for name in names:
            retention = policy.for_room(name)
            if retention.keeps_all:
                continue
            commands = self._node.commands_for(name)
            try:
                gone, xdeled = await expire_history(
                    commands, retention, now_ms, self._node.node
                )
            except PurgeLeaseLost:
                self.log.warn(
                    "retention purge: node {node} no longer holds the purge "
                    "lease; stopped",
                    node=self._node.node,
                )
                break
            except RoomError as e:
                self.log.warn(
                    "retention purge: room {room!r} failed: {error}",
                    room=name,
                    error=e,
                )
                failed.append(name)
                continue
            dropped += xdeled
            if gone:
                removed[name] = gone
        if removed:
            self.log.info(
                "retention purge on node {node}: {count} expired messages "
                "removed from redis ({events} stream entries) in {rooms} rooms",
                node=self._node.node,
                count=sum(removed.values()),
                events=dropped,
                rooms=len(removed),
            )
        if failed:
            raise RoomError(f"the purge of {len(failed)} room(s) failed")
        return removed

    async def _room_names(self) -> list[bytes]:
        names = await self._commands.run(scripts.ROOM_NAMES)
        return list(names)

    async def _rewrite(self) -> None:
        """Ask Redis to rewrite its files so the removed text leaves the disk."""
        try:
            _, appendonly = await self._commands.execute("CONFIG", "GET", "appendonly")
            if appendonly == b"yes":
                await self._commands.execute("BGREWRITEAOF")
                what = "rewrite its append-only file"
            else:
                _, save = await self._commands.execute("CONFIG", "GET", "save")
                if not save:
                    self.log.info(
                        "retention purge: redis keeps no files (no appendonly, "
                        "no save): nothing to rewrite"
                    )
                    return
                await self._commands.execute("BGSAVE")
                what = "save a new snapshot"
        except (RoomError, ValueError) as e:
            self.log.warn(
                "retention purge: redis would not rewrite its files ({error}): "
                "the removed messages stay in them until it does (BGREWRITEAOF)",
                error=e,
            )
            return
        self.log.info("retention purge: asked redis to {what}", what=what)
