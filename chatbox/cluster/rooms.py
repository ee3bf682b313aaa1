# -*- test-case-name: tests.test_cluster -*-
"""A cluster node's named rooms: each a RedisRoom over its own keys, followed
only while this node's clients are in it.

The registry (chatbox.chat.rooms) makes a room on its first local join and
unloads it when idle; here that means following and unfollowing it:

- make: one FOLLOW script counts the room among the cluster's rooms (the
  `rooms` set, refused with 404 past --max-rooms in the same atomic step, so
  two nodes cannot both take the last place), records this node as a
  follower, and tells where the room's stream ends, from where the node's
  one reader starts reading it (chatbox.cluster.reader: it blocks on the
  node's bell, which the room's events ring, and reads only the rooms with
  news, so neither a connection nor a blocked key per room).
- unload: UNFOLLOW releases any name the node still holds there, and forgets
  a room nobody follows that never held a message (a made-up name leaves
  nothing in Redis, and frees its place under --max-rooms).
- summary: GET /rooms on a node that has not loaded a room reads its online
  count and newest message from Redis, so every node lists the same.

Nothing here holds a connection, a lease or a heartbeat of its own: the
default room's (the node's) are shared, and HEARTBEAT reaps a dead node's
names in every room it followed. `stored` is empty: the cluster's rooms are
in Redis, which cannot be asked before the reactor runs, and --max-rooms is
counted there.
"""

from typing import Any

from twisted.internet.defer import Deferred, TimeoutError
from zope.interface import implementer

from chatbox.chat.retention import NO_RETENTION, RetentionPolicy
from chatbox.chat.room import IRoom, RoomError
from chatbox.chat.rooms import IRoomMaker, RoomRefused, Unloaded
from chatbox.cluster import scripts
from chatbox.cluster.room import RedisRoom

__all__ = ["RedisRooms"]

LIMIT_REACHED = "no such room, and the server's room limit is reached"


@implementer(IRoomMaker)
class RedisRooms:
    def __init__(
        self,
        node: RedisRoom,
        reactor: Any,
        most: int = 0,
        timeout: float = 5.0,
        retention: RetentionPolicy = NO_RETENTION,
    ) -> None:
        """`node` is the default room, whose link, reader and lease every
        named room shares; `most` the cluster's room limit (0: none, as with
        a fixed list of rooms)."""
        self._node = node
        self._reactor = reactor
        self._most = most
        self._timeout = timeout
        self.retention = retention

    def stored(self) -> dict[str, int | None]:
        return {}

    def names(self) -> "Deferred[list[str]]":
        """Every named room of the cluster (Redis' `rooms` set: followed by
        some node, or holding a message), loaded here or not, by name: what
        a whole-server operator action walks on a cluster, where `stored`
        knows none."""
        asked = self._node.commands_for("").run(scripts.ROOM_NAMES)
        return asked.addCallback(lambda names: sorted(n.decode() for n in names))

    def exists(self, name: str) -> "Deferred[bool]":
        """Whether room `name` exists in the cluster, whichever node made it
        (so an operator may act on it without making it)."""
        return self.names().addCallback(lambda names: name in names)

    def make(self, name: str) -> "Deferred[IRoom]":
        return Deferred.fromCoroutine(self._make(name))

    async def _make(self, name: str) -> IRoom:
        # A node just started (or back from a lost lease) may be moments from
        # its lease; FOLLOW needs one, so a dead node's follow is reaped.
        try:
            await self._node.when_leased().addTimeout(self._timeout, self._reactor)
        except TimeoutError:
            raise RoomError("not connected to the chat cluster yet") from None
        room = self._node.named(name)
        room.retention = self.retention.for_room(name)
        if not await room.follow(self._most):
            raise RoomRefused(404, LIMIT_REACHED)
        return room

    def unload(self, name: str, room: IRoom) -> "Deferred[Unloaded]":
        return Deferred.fromCoroutine(self._unload(room))

    async def _unload(self, room: IRoom) -> Unloaded:
        assert isinstance(room, RedisRoom)
        complete = bool(await room.close())
        return Unloaded(complete, kept=not room.forgotten)

    def summary(self, name: str) -> "Deferred[tuple[int, int | None]]":
        commands = self._node.commands_for(name)
        asked = commands.run(scripts.ROOM_SUMMARY)

        def answered(result: list[int]) -> tuple[int, int | None]:
            online, newest = result
            return int(online), None if int(newest) < 0 else int(newest)

        return asked.addCallback(answered)
