"""The chat's shared state, behind one interface with two implementations.

A room is who holds which nickname (ARNS), the history, and the stream of
events everyone must see. `LocalRoom` (chatbox.local.room) keeps them in
this process, with history in data.json; `RedisRoom` (chatbox.cluster.room)
keeps them in Redis, so several chatbox processes act as one chat.

Every operation returns a Deferred so the protocol has one code path for
both. The local room answers ARNS and history at once (its Deferreds have
fired when returned); only `post` waits, for the journal's fsync, in both
rooms.

A `post` may carry the client's `send_id` (ext): a repeat of one the room
has already stored, from the same nickname within its window, fires with
the original's `Posted` and stores and tells nothing. The room decides,
because only it can make "already stored?" and "store it" one step: on a
cluster, in the same Redis script.

Owners are the protocol instances of this process's connections. A room
knows the nicknames of its own process's connections synchronously
(`name_of`), because a request must be checked against them at once; the
cluster-wide truth is the room's to keep.
"""

from collections.abc import Callable, Hashable, Iterable
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from chatbox.wire import codec
from chatbox.wire.clock import Moment, time_of
from chatbox.wire.messages import Message

__all__ = [
    "Deliver",
    "IRoom",
    "Imported",
    "Page",
    "Posted",
    "RoomError",
    "posted_from",
]

# How a room hands an event to this process's connections: the event, and
# the connection that caused it (it gets a reply instead), if it is local.
Deliver = Callable[[Message, Hashable | None], None]


class Posted(NamedTuple):
    """A stored message, as its `send` reply tells it."""

    id: int
    name: str
    content: str
    when: Moment


class Page(NamedTuple):
    """What a `get` is answered from: encoded history entries, oldest first;
    every online nickname, in registration order; and those of them that
    are verified (ext), in the same order."""

    entries: list[bytes]
    online: list[str]
    verified: list[str]


class Imported(NamedTuple):
    """One message brought in by `chatbox-admin import` (from a v2 data.json
    or an export), as the history entry it becomes, less the id the room
    hands it."""

    name: str
    content: str
    timestamp: str  # v2 text, as stored
    millis: int | None  # epoch ms; None if `timestamp` cannot be read
    mark: str | None = None  # chatbox.wire.messages.MARKS


def posted_from(entry: bytes | None, fallback: Posted) -> Posted:
    """The `Posted` of a stored history entry (chatbox.wire.messages'
    shape), for the reply to a repeated send_id: the room keeps only the
    id, and the history has the rest. An entry gone from history (only a
    cluster whose history was emptied by hand can lack one) is answered
    with `fallback`: the original's id, with the repeat's own fields."""
    if entry is None:
        return fallback
    stored = codec.decode(entry)
    text = stored["timestamp"]
    when = Moment(text, time_of(text, stored.get("time")) or 0)
    return Posted(fallback.id, stored["name"], stored["content"], when)


class RoomError(Exception):
    """The room could not carry out a request; str() is safe to show a client
    as the `error` of an `ErrorWhen...` reply."""


class IRoom(Interface):
    healthy = Attribute("False while the room cannot serve requests.")
    where = Attribute("Where the history is kept, for logs (no secrets).")
    retention = Attribute(
        "The room's chatbox.chat.retention.Retention, set by whoever makes "
        "the room: expired messages are left out of every read at once."
    )

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

    def claim(
        owner: Hashable, name: str, when: Moment, verified: bool = False
    ) -> "Deferred[None]":
        """Register `owner` as `name` and tell everyone else; fails with
        NameTaken or RoomError. A `verified` nickname (its connection showed
        a token for it) is told so (`messages.joined(..., verified=True)`),
        counted in `page().verified` while held, and its later messages are
        marked (`post(..., mark="verified")`, by the caller). A NameTaken
        says whether the holder is verified (`NameTaken.verified`), so a
        verified claim can tell a guest squatting on its nickname from
        itself on another connection."""

    def rename(
        owner: Hashable, name: str, when: Moment, verified: bool = False
    ) -> "Deferred[str]":
        """Change `owner`'s nickname and tell everyone else; fires with the
        old name; fails with NameTaken (with `.verified`) or RoomError.
        `verified` as for `claim`: whether the new nickname is."""

    def release(owner: Hashable, when: Moment) -> str | None:
        """`owner` is gone: free its nickname and tell everyone else. Returns
        the nickname it held here, if any; the room finishes (and retries)
        the release on its own."""

    def post(
        owner: Hashable,
        name: str,
        content: str,
        when: Moment,
        send_id: str | None,
        mark: str | None = None,
    ) -> "Deferred[Posted]":
        """Store a message; fires once it is stored durably and sent on to
        everyone else; fails with RoomError. A repeat of `send_id` by `name`
        within the window fires with the original instead (waiting for it,
        if it is still being stored). `mark` (chatbox.wire.messages.MARKS)
        is kept with the message and told with it: "announcement" for an
        operator's (owner None, holding no nickname), "verified" for a
        verified nickname's."""

    def delete(ids: list[int], when: Moment) -> "Deferred[list[int]]":
        """An operator's removal: the messages with these ids that exist
        leave every `get` at once, the room's connections are told
        (`messages.deleted`), and the Deferred fires with the removed ids,
        sorted, once the removal is durable and their content is gone from
        the room's storage (files, journal; Redis history and stream).
        Ids are never handed out again. Fails with RoomError."""

    def delete_by(
        name: str, since: int | None, until: int | None, when: Moment
    ) -> "Deferred[list[int]]":
        """`delete` for every message whose nickname is the same as `name`
        for ARNS, posted within [since, until] (epoch ms, inclusive; None:
        unbounded). History is scanned off the reactor thread."""

    def entries(after: int, limit: int) -> "Deferred[list[tuple[int, bytes]]]":
        """Up to `limit` (id, encoded entry) pairs with id > `after`, oldest
        first, expired ones left out: a page of an unbounded read (export,
        backup), which goes on from the last id it got. Each page is read
        at one instant; a message deleted between pages is simply absent."""

    def import_entries(entries: list[Imported]) -> "Deferred[list[int]]":
        """Append these messages after the room's history, in this order,
        each with a new id; fires with the ids once they are stored as
        durably as a `post`. Nobody is told (clients see them at their next
        `get`); send_ids are not involved. Fails with RoomError."""

    def expire(now_ms: int) -> "Deferred[int]":
        """Remove from storage the messages the room's retention has expired
        as of `now_ms`, durably and from every file (as `delete` does), but
        without telling anyone; fires with how many were removed."""

    def typing(owner: Hashable, name: str, when: Moment) -> None:
        """Tell everyone else that `name` is typing (as of `when`, which
        no client is told); never stored, and dropped rather than retried
        when the room is unwell."""

    def online_count() -> "Deferred[int]":
        """How many nicknames are registered in the whole chat."""

    def last_activity() -> int | None:
        """When the newest message was posted (epoch ms), as last known;
        None if there is none (GET /rooms)."""

    def page(
        limit: int, before: int | None, after: int | None, max_bytes: int
    ) -> "Deferred[Page]":
        """The newest `limit` encoded history entries with after < id <
        before that the room's retention keeps, oldest first, no more than
        fit in `max_bytes` (but always the newest one), every online
        nickname in registration order, and the verified ones among them.
        Only what is returned is fetched."""

    def health() -> dict[str, Any]:
        """Fields for /healthz describing the room's own machinery."""

    def flush() -> "Deferred[None]":
        """Fires once everything accepted so far is settled."""

    def close() -> "Deferred[bool]":
        """Stop for good after settling everything; True if nothing is left
        for the next start-up to repair."""
