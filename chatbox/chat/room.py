"""The chat's shared state, behind one interface with two implementations.

A room is who holds which nickname (ARNS), the history, and the stream of
events everyone must see. `LocalRoom` (chatbox.local.room) keeps them in
this process, with history in data.json; `RedisRoom` (chatbox.cluster.room)
keeps them in Redis, so several chatbox processes act as one chat.

Every operation returns a Deferred so the protocol has one code path for
both. The local room answers ARNS and history at once (its Deferreds have
fired when returned); only `post` waits, for the journal's fsync, in both
rooms.

Owners are the protocol instances of this process's connections. A room
knows the nicknames of its own process's connections synchronously
(`name_of`), because a request must be checked against them at once; the
cluster-wide truth is the room's to keep.
"""

from collections.abc import Callable, Hashable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from chatbox.wire.messages import Message

__all__ = ["Deliver", "IRoom", "RoomError"]

# How a room hands an event to this process's connections: the event, and
# the connection that caused it (it gets a reply instead), if it is local.
Deliver = Callable[[Message, Hashable | None], None]


class RoomError(Exception):
    """The room could not carry out a request; str() is safe to show a client
    as the `error` of an `ErrorWhen...` reply."""


class IRoom(Interface):
    healthy = Attribute("False while the room cannot serve requests.")
    where = Attribute("Where the history is kept, for logs (no secrets).")

    def attach(deliver: Deliver, lost: Callable[[list[Any]], None]) -> None:
        """Give the room the ways to reach local connections: `deliver` for
        events, `lost` for connections whose nickname the room can no longer
        vouch for (they are closed so their clients register again)."""

    def start() -> None:
        """Begin serving (threads, connections, timers)."""

    def name_of(owner: Hashable) -> str | None:
        """The nickname a local connection holds, or None."""

    def audience() -> Iterable[Hashable]:
        """Local connections that receive events."""

    def registered_count() -> int:
        """Local connections holding a nickname."""

    def message_count() -> int:
        """Messages in the history, as last known."""

    def claim(owner: Hashable, name: str, timestamp: str) -> "Deferred[None]":
        """Register `owner` as `name` and tell everyone else; fails with
        NameTaken or RoomError."""

    def rename(owner: Hashable, name: str, timestamp: str) -> "Deferred[str]":
        """Change `owner`'s nickname and tell everyone else; fires with the
        old name; fails with NameTaken or RoomError."""

    def release(owner: Hashable, timestamp: str) -> str | None:
        """`owner` is gone: free its nickname and tell everyone else. Returns
        the nickname it held here, if any; the room finishes (and retries)
        the release on its own."""

    def post(
        owner: Hashable, name: str, content: str, timestamp: str
    ) -> "Deferred[int]":
        """Store a message; fires with its id once stored durably and sent on
        to everyone else; fails with RoomError."""

    def page(
        limit: int, before: int | None, after: int | None, max_bytes: int
    ) -> "Deferred[tuple[list[bytes], list[str]]]":
        """The newest `limit` encoded history entries with after < id <
        before, oldest first, no more than fit in `max_bytes` (but always
        the newest one), and every online nickname in registration order.
        Only what is returned is fetched."""

    def health() -> dict[str, Any]:
        """Fields for /healthz describing the room's own machinery."""

    def flush() -> "Deferred[None]":
        """Fires once everything accepted so far is settled."""

    def close() -> "Deferred[bool]":
        """Stop for good after settling everything; True if nothing is left
        for the next start-up to repair."""
