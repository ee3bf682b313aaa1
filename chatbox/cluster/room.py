# -*- test-case-name: tests.unit.test_cluster_units -*-
"""A room shared by several chatbox nodes through Redis.

The default room (`/`) and each named room a node has loaded is one
RedisRoom over its own keys (chatbox.cluster.keys); the default one owns the
node's command link, event reader and lease, which its named rooms share
(`named`), so a node holds two connections and one lease whatever rooms it
follows (chatbox.cluster.rooms says when a room is followed).

Each node is one chatbox process. The cluster's state lives in Redis and is
changed only by the Lua scripts of chatbox.cluster.scripts, each atomic, each
writing its event to one Redis stream in the same step. The room is the
IRoom over that state; it composes the parts that keep a node in the
cluster: the command link (chatbox.cluster.commands), the event reader that
follows the stream (chatbox.cluster.reader, which says why a stream) and the
node's lease (chatbox.cluster.lease). `RedisRoom.from_address` builds the
real ones; tests pass their own.

A node keeps, for its own connections only, who is registered under which
name (so a request is checked at once) and which holder id stands for each
in Redis. A connection joins the node's audience at its own `register`
event in the stream: from then on it gets every event, exactly once, and
none from before. If the stream reaches that event before the claim's reply,
reading waits for the reply, so the client sees its reply first.
"""

import itertools
import uuid
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatbox.chat import sends
from chatbox.chat.arns import NameTaken, name_keys
from chatbox.chat.retention import KEEP_ALL, Retention
from chatbox.chat.room import (
    Deliver,
    Imported,
    IRoom,
    Page,
    Posted,
    RoomError,
    posted_from,
)
from chatbox.cluster import scripts
from chatbox.cluster.address import RedisAddress
from chatbox.cluster.commands import Commands
from chatbox.cluster.keys import DEFAULT_PREFIX, STREAM_LENGTH, Keys
from chatbox.cluster.lease import Lease, Watcher
from chatbox.cluster.link import RedisInDoubt, RedisLink
from chatbox.cluster.reader import EventReader
from chatbox.wire import codec, messages
from chatbox.wire.clock import Moment, Timestamps, time_of

__all__ = [
    "DEFAULT_PREFIX",
    "PurgeLeaseLost",
    "RedisRoom",
    "entry_template",
    "expire_history",
    "retention_args",
]

# History entries one PAGE call returns at most: a bare `get` of 10,000
# entries is a few dozen short calls, each leaving Redis free in between.
PAGE_SLICE = 500
# Ids one DELETE script removes at most. Each is found in the stream by some
# 20-40 short reads, about 0.3 ms of Redis' time in a stream of 100,000
# entries: a batch holds Redis (and every node) for under 10 ms.
DELETE_BATCH = 25
# History entries read per round trip by delete_by.
SCAN_SLICE = 1000
# Seconds an online count read from Redis is answered from.
COUNT_FOR = 1.0
# History entries one ENTRIES call returns at most (export, backup).
ENTRIES_SLICE = 1000
# History entries one EXPIRE call removes at most, and stream entries it
# reads at most: a few milliseconds of Redis' time each (bench/purge.py).
EXPIRE_BATCH = 1000
EXPIRE_SCAN = 4000

_NOT_READY = "not connected to the chat cluster yet"
# What CLAIM and RENAME answer for a name held by another (or, renaming to
# the exact same name, by the holder itself): verified or not.
_TAKEN = 0
_TAKEN_VERIFIED = -2
# POST's mark argument, and the `a` field of a message event: "1" has meant
# an announcement since before verified nicknames; "0" no mark.
_MARK_CODES = {None: "0", "announcement": "1", "verified": "v"}
_MARKS_OF = {b"1": "announcement", b"v": "verified"}
_NAME_LOST = "nickname lost, reconnect"


def entry_template(
    name: str, content: str, when: Moment, mark: str | None = None
) -> tuple[bytes, bytes]:
    """The history entry of chatbox.wire.messages, split around its id, which
    only Redis knows until the message is stored."""
    return _split(name, content, when.text, when.millis, mark)


def _split(
    name: str, content: str, text: str, millis: int | None, mark: str | None
) -> tuple[bytes, bytes]:
    entry = messages.history_entry(0, name, content, text, millis, mark)
    encoded = codec.encode(entry)
    head, _, tail = encoded.partition(b'"id":0')
    return head + b'"id":', tail


class PurgeLeaseLost(RoomError):
    """Another node holds the purge lease now: this one stops purging."""


async def expire_history(
    commands: Commands, retention: Retention, now_ms: int, node: str = ""
) -> tuple[int, int]:
    """Remove from a room's history (the room of `commands`' keys) what
    `retention` expired as of `now_ms`, and the `message` entries of the
    removed ids from its stream, EXPIRE call by EXPIRE call. With `node`,
    each call first checks that it holds the purge lease (PurgeLeaseLost if
    not). Returns (history entries removed, stream entries removed)."""
    if retention.keeps_all:
        return 0, 0
    kept = retention_args(retention, now_ms)
    cursor: bytes | str = "-"
    upto: bytes | int = 0
    removed = dropped = 0
    while True:
        result = await commands.run(
            scripts.EXPIRE, node, *kept, EXPIRE_BATCH, cursor, upto, EXPIRE_SCAN
        )
        if result == -1:
            raise PurgeLeaseLost("the purge lease is another node's now")
        gone, xdeled, cursor, upto, done = result
        removed += int(gone)
        dropped += int(xdeled)
        if int(gone) < EXPIRE_BATCH and int(done):
            return removed, dropped


def retention_args(retention: Retention, now_ms: int) -> tuple[int, int | str]:
    """A room's retention as PAGE, ENTRIES and EXPIRE take it: the most
    messages kept (0: no limit) and the oldest time kept ("": none)."""
    oldest = retention.oldest_kept_ms(now_ms)
    return retention.messages, "" if oldest is None else oldest


def _entry_id(entry: bytes) -> int:
    """The id of an encoded history entry, which entry_template puts first."""
    return int(entry[len(b'{"id":') : entry.index(b",")])


def _ids(joined: bytes) -> list[int]:
    """A delete event's ids, joined by commas (DELETE)."""
    return [int(part) for part in joined.split(b",")]


def _event(fields: dict[bytes, bytes]) -> messages.Message | None:
    """The wire event for one stream entry; its shape is chatbox.wire.messages'.

    None for a kind this node does not know (one a newer node wrote, during
    a rolling upgrade): skipped, never mistaken for another kind. A new
    event kind gets its case here.
    """
    kind = fields[b"k"]
    name = fields[b"n"].decode()
    if kind == b"typing":
        return messages.typing(name)
    text = fields[b"t"].decode()
    # An event an older node wrote has no `ms`: read from its v2 timestamp.
    ms = fields.get(b"ms")
    when = Moment(text, time_of(text, None if ms is None else int(ms)) or 0)
    if kind == b"message":
        content = fields[b"c"].decode()
        mark = _MARKS_OF.get(fields.get(b"a", b""))
        return messages.posted(name, content, when, int(fields[b"id"]), mark)
    if kind == b"delete":
        return messages.deleted(_ids(fields[b"ids"]), when)
    # `v` (a verified nickname) is absent from an older node's events.
    if kind == b"register":
        return messages.joined(name, when, fields.get(b"v") == b"1")
    if kind == b"change":
        old = fields[b"old"].decode()
        return messages.renamed(old, name, when, fields.get(b"v") == b"1")
    if kind == b"leave":
        return messages.left(name, when)
    return None


@implementer(IRoom)
class RedisRoom:
    log = Logger()
    # Set by whoever makes the room (tap for the default room, RedisRooms).
    retention: Retention = KEEP_ALL

    def __init__(
        self,
        commands: Commands,
        reader: EventReader,
        lease: Lease,
        clock: Any,
        name: str = "",
    ) -> None:
        self.node = lease.node
        self.where = str(commands.address)
        # "" is the default room, which owns the node's link, reader and
        # lease (starts them, and retires the node when it closes); a named
        # room shares them (chatbox.cluster.rooms makes it).
        self.room_name = name
        self._keys = commands.keys
        self._commands = commands
        self._reader = reader
        self._lease = lease
        self._clock = clock
        self._deliver: Deliver = lambda event, exclude: None
        self._lost: Callable[[list[Any]], None] = lambda owners: None

        # This node's connections. Names are set when a claim's reply says
        # so; the audience is joined at the claim's own event in the stream.
        self._names: dict[Hashable, str] = {}
        self._audience: dict[Hashable, None] = {}
        self._holder_of: dict[Hashable, str] = {}
        self._owner_of: dict[str, Hashable] = {}
        self._claiming: set[Hashable] = set()
        self._serial = itertools.count(1)
        # Holders whose release Redis has not confirmed, with the leave's time.
        self._unreleased: dict[str, Moment] = {}
        self._releasing: set[str] = set()
        self._held_for: Hashable | None = None  # reading waits for its reply
        self._messages = 0
        self._last_activity: int | None = None  # of the newest message seen
        # The online count, as last asked of Redis (online_count).
        self._count = 0
        self._count_until = 0.0
        self._count_asked: Deferred | None = None
        self._count_waiters: list[Deferred[int]] = []

        # Set by unload: Redis forgot the room (no follower, no message).
        self.forgotten = False
        # A named room reads and watches the lease from `follow` on, so one
        # refused (the room limit) leaves nothing behind.
        self._watcher: Watcher | None = None
        if not name:
            reader.attach(self._on_event, self._announce_ready, self._missed_events)
            self._watcher = lease.watch(self._lease_renewed, self._lease_lost)

    @classmethod
    def from_address(
        cls,
        address: RedisAddress,
        reactor: Any,
        lease: float = 15.0,
        timeout: float = 5.0,
        prefix: str = DEFAULT_PREFIX,
        node: str | None = None,
    ) -> "RedisRoom":
        """The default room of a new node (`node` names it, else a random
        id) of the cluster at `address`, with the node's two connections to
        it, which its named rooms share (`named`)."""
        keys = Keys.under(prefix)
        commands = Commands(RedisLink(address, reactor, timeout, "redis"), keys)
        reader = EventReader(
            RedisLink(address, reactor, timeout, "redis event reader"), keys, reactor
        )
        node = node or uuid.uuid4().hex[:12]
        reader.listen_to(node)
        return cls(commands, reader, Lease(commands, reactor, node, lease), reactor)

    def named(self, name: str) -> "RedisRoom":
        """Room `name` on this node, sharing its link, reader and lease; not
        followed until `follow` (chatbox.cluster.rooms)."""
        commands = self._commands.for_keys(self._keys.room(name))
        return RedisRoom(commands, self._reader, self._lease, self._clock, name)

    @property
    def lease_seconds(self) -> float:
        """The node's lease (--redis-lease), which the purge lease matches."""
        return self._lease.seconds

    def commands_for(self, name: str) -> Commands:
        """This node's command link, for room `name`'s keys."""
        return self._commands.for_keys(self._keys.room(name))

    def when_leased(self) -> "Deferred[None]":
        return self._lease.when_held()

    def follow(self, most: int) -> "Deferred[bool]":
        """Count this named room among the cluster's (at most `most`, 0 for
        no limit) and start reading its stream where it is now. Fires with
        False if the cluster has `most` rooms already."""
        followed = self._commands.run(scripts.FOLLOW, self.node, self.room_name, most)

        def answered(result: object) -> bool:
            if result == -1:
                raise RoomError(_NOT_READY)
            if result == 0:
                return False
            last, added, messages, newest, trimmed = result  # type: ignore[misc]
            self._watcher = self._lease.watch(self._lease_renewed, self._lease_lost)
            self._messages = int(messages)
            self._last_activity = None if int(newest) < 0 else int(newest)
            self._reader.follow(
                self._keys.events,
                self._on_event,
                lambda: None,
                self._missed_events,
                at=(last, int(added), int(trimmed)),
            )
            return True

        return followed.addCallback(answered)

    # -- IRoom: set-up and state --

    def attach(self, deliver: Deliver, lost: Callable[[list[Any]], None]) -> None:
        self._deliver = deliver
        self._lost = lost

    def start(self) -> None:
        if self.room_name:
            return  # the node is the default room's to start
        self._lease.start()  # whose heartbeats retry pending releases
        self._commands.start()
        self._reader.start()

    @property
    def ready(self) -> bool:
        """Leased, and reading the stream from a known place."""
        return self._lease.held and self._reader.positioned(self._keys.events)

    @property
    def healthy(self) -> bool:
        return self.ready and self._commands.up and self._reader.up

    def health(self) -> dict[str, Any]:
        return {
            "redis": "ok" if self._commands.up and self._reader.up else "unavailable",
            "node": self.node,
            "lease": "held" if self._lease.held else "none",
            # Rooms whose events this node reads: those loaded here.
            "streams": self._reader.following(),
        }

    def name_of(self, owner: Hashable) -> str | None:
        return self._names.get(owner)

    def audience(self) -> Iterable[Hashable]:
        return list(self._audience)

    def registered_count(self) -> int:
        return len(self._names)

    def message_count(self) -> int:
        return self._messages

    def last_activity(self) -> int | None:
        return self._last_activity

    # -- IRoom: requests --

    def _name_script(
        self,
        script: bytes,
        holder: str,
        name: str,
        when: Moment,
        refused: str,
        verified: bool,
    ) -> "Deferred[bytes]":
        """CLAIM or RENAME, which take the same arguments and answer alike:
        fires with the stream id of the event; fails with NameTaken (saying
        whether the holder is verified), or with RoomError(`refused`) when
        this node cannot vouch for the holder."""
        running = self._commands.run(
            script,
            self.node,
            holder,
            "\n".join(name_keys(name)),
            name,
            when.text,
            when.millis,
            STREAM_LENGTH,
            self.room_name,
            "1" if verified else "0",
        )

        def answered(result: object) -> bytes:
            if result in (_TAKEN, _TAKEN_VERIFIED):
                raise NameTaken(name, result == _TAKEN_VERIFIED)
            if not isinstance(result, bytes):
                raise RoomError(refused)
            return result

        return running.addCallback(answered)

    def claim(
        self, owner: Hashable, name: str, when: Moment, verified: bool = False
    ) -> "Deferred[None]":
        if not self.ready:
            return fail(RoomError(_NOT_READY))
        holder = f"{self.node}:{next(self._serial)}"
        self._holder_of[owner] = holder
        self._owner_of[holder] = owner
        self._claiming.add(owner)
        claimed = self._name_script(
            scripts.CLAIM, holder, name, when, _NOT_READY, verified
        )

        def decided(event_id: bytes) -> None:
            if self._holder_of.get(owner) != holder:
                return
            self._names[owner] = name
            if self._reader.passed(event_id, self._keys.events):
                # The stream passed the claim's event before this reply
                # (only if it was trimmed or read around): join now.
                self._audience[owner] = None

        def failed(failure: Failure) -> Failure:
            # Unless the connection has gone (and released the holder) meanwhile:
            if self._holder_of.get(owner) == holder:
                if failure.check(RedisInDoubt):
                    # The claim may have happened: free whatever it got. A
                    # new claim gets a new holder.
                    self.release(owner, when)
                else:
                    self._forget(owner)
            return failure

        def finished(result: object) -> object:
            self._claiming.discard(owner)
            if self._held_for is owner:
                # After the protocol has sent its reply.
                self._clock.callLater(0, self._resume)
            return result

        return claimed.addCallbacks(decided, failed).addBoth(finished)

    def rename(
        self, owner: Hashable, name: str, when: Moment, verified: bool = False
    ) -> "Deferred[str]":
        holder = self._holder_of.get(owner)
        old = self._names.get(owner)
        if holder is None or old is None:
            return fail(RoomError(_NAME_LOST))
        if not self.ready:
            return fail(RoomError(_NOT_READY))
        renamed = self._name_script(
            scripts.RENAME, holder, name, when, _NAME_LOST, verified
        )

        def decided(_: bytes) -> str:
            if self._holder_of.get(owner) == holder:
                self._names[owner] = name
            return old

        def failed(failure: Failure) -> Failure:
            if failure.check(RedisInDoubt) and self._holder_of.get(owner) == holder:
                # Which name it holds now is unknown here: have its client
                # reconnect and register again, rather than guess.
                self._clock.callLater(0, self._lost, [owner])
            return failure

        return renamed.addCallbacks(decided, failed)

    def release(self, owner: Hashable, when: Moment) -> str | None:
        name = self._names.get(owner)
        holder = self._forget(owner)
        if holder is not None:
            self._unreleased[holder] = when
            self._release(holder)
        return name

    def _forget(self, owner: Hashable) -> str | None:
        """Drop everything this node keeps about a connection; returns the
        holder that stood for it in Redis, if any."""
        self._names.pop(owner, None)
        self._audience.pop(owner, None)
        holder = self._holder_of.pop(owner, None)
        if holder is not None:
            self._owner_of.pop(holder, None)
        return holder

    def _release(self, holder: str) -> None:
        """Release in Redis; kept and retried until Redis confirms, so a
        name is never stuck (the lease would free it in the end anyway)."""
        if holder in self._releasing or not self._commands.up:
            return
        self._releasing.add(holder)
        released = self._commands.run(
            scripts.RELEASE,
            self.node,
            holder,
            *self._unreleased[holder],
            STREAM_LENGTH,
        )

        def done(_: object) -> None:
            self._unreleased.pop(holder, None)

        def failed(failure: Failure) -> None:
            failure.trap(RoomError)
            self.log.info(
                "release of {holder} waits for redis: {error}",
                holder=holder,
                error=failure.value,
            )

        released.addCallbacks(done, failed)
        released.addBoth(lambda _: self._releasing.discard(holder))

    def post(
        self,
        owner: Hashable,
        name: str,
        content: str,
        when: Moment,
        send_id: str | None = None,
        mark: str | None = None,
    ) -> "Deferred[Posted]":
        announcement = mark == "announcement"
        # An operator's announcement holds no name (owner None, holder "").
        holder = "" if announcement else self._holder_of.get(owner)
        if holder is None:
            return fail(RoomError(_NAME_LOST))
        head, tail = entry_template(name, content, when, mark)
        posted = self._commands.run(
            scripts.POST,
            self.node,
            holder,
            name,
            content,
            when.text,
            when.millis,
            head,
            tail,
            STREAM_LENGTH,
            send_id or "",
            int(sends.WINDOW * 1000),
            sends.MAX_TRACKED,
            _MARK_CODES[mark],
        )

        def stored(result: object) -> Posted:
            if isinstance(result, list):  # a repeat: {id, entry or false}
                message_id, entry = result
                original = Posted(int(message_id), name, content, when)
                return posted_from(entry or None, original)
            if result == -1:
                raise RoomError(_NAME_LOST)
            return Posted(int(result), name, content, when)

        return posted.addCallback(stored)

    def delete(self, ids: list[int], when: Moment) -> "Deferred[list[int]]":
        """DELETE in batches of DELETE_BATCH ids, so no one script holds
        Redis (and every other node) for long; each batch is atomic, with
        its own `delete` event."""
        wanted = sorted({i for i in ids if type(i) is int and i > 0})
        return Deferred.fromCoroutine(self._delete(wanted, when))

    async def _delete(self, ids: list[int], when: Moment) -> list[int]:
        removed: list[int] = []
        for start in range(0, len(ids), DELETE_BATCH):
            batch = ids[start : start + DELETE_BATCH]
            gone = await self._commands.run(
                scripts.DELETE, when.text, when.millis, STREAM_LENGTH, *batch
            )
            removed += [int(i) for i in gone]
        return removed

    def delete_by(
        self, name: str, since: int | None, until: int | None, when: Moment
    ) -> "Deferred[list[int]]":
        return Deferred.fromCoroutine(self._delete_by(name, since, until, when))

    async def _delete_by(
        self, name: str, since: int | None, until: int | None, when: Moment
    ) -> list[int]:
        """Reads the history newest first in slices of SCAN_SLICE entries
        (PAGE, as a `get` does), each decoded between two round trips to
        Redis, so neither Redis nor the reactor is held for long; ARNS keys
        are computed in Python (Lua has no ICU), once per distinct name.
        Ids are not in time order across nodes (each stamps its own
        clock), so the whole history is read, not a range of it."""
        wanted = set(name_keys(name))
        keys_of: dict[str, bool] = {}
        matched: list[int] = []
        high = "+inf"
        while True:
            # Expired messages too: erasing leaves none of them behind.
            entries, *_ = await self._commands.run(
                scripts.PAGE, high, "-inf", SCAN_SLICE, 0, "0", 0, ""
            )
            for encoded in entries:
                entry = codec.decode(encoded)
                millis = entry.get("time")
                if since is not None or until is not None:
                    if not isinstance(millis, int):
                        continue  # an unreadable time is within no bounds
                    if since is not None and millis < since:
                        continue
                    if until is not None and millis > until:
                        continue
                author = entry["name"]
                same = keys_of.get(author)
                if same is None:
                    same = keys_of[author] = not wanted.isdisjoint(name_keys(author))
                if same:
                    matched.append(entry["id"])
            if len(entries) < SCAN_SLICE:
                break
            high = f"({_entry_id(entries[-1])}"
        return await self._delete(sorted(matched), when)

    def typing(self, owner: Hashable, name: str, when: Moment) -> None:
        holder = self._holder_of.get(owner)
        if holder is None or not self._commands.up:
            return
        sent = self._commands.run(scripts.TYPING, holder, name, *when, STREAM_LENGTH)
        sent.addErrback(lambda failure: failure.trap(RoomError))

    def online_count(self) -> "Deferred[int]":
        """Asked by connections that have not joined, which nothing else
        limits per address: one script a second per node at most, however
        many ask, all answered from it."""
        now = self._clock.seconds()
        if self._count_asked is None and now < self._count_until:
            return succeed(self._count)
        waiter: Deferred[int] = Deferred()
        if self._count_asked is None:
            self._count_asked = self._commands.run(scripts.ONLINE_COUNT)
            self._count_asked.addBoth(self._counted)
        self._count_waiters.append(waiter)
        return waiter

    def _counted(self, result: object) -> None:
        self._count_asked = None
        waiters, self._count_waiters = self._count_waiters, []
        if isinstance(result, Failure):
            for waiter in waiters:
                waiter.errback(result)
            result.trap(RoomError)
            return
        self._count = int(result)
        self._count_until = self._clock.seconds() + COUNT_FOR
        for waiter in waiters:
            waiter.callback(self._count)

    def page(
        self, limit: int, before: int | None, after: int | None, max_bytes: int = 0
    ) -> "Deferred[Page]":
        return Deferred.fromCoroutine(self._page(limit, before, after, max_bytes))

    async def _page(
        self, limit: int, before: int | None, after: int | None, max_bytes: int
    ) -> Page:
        """Newest first, slice by slice, each below the last: history only
        grows above, so the slices join into one consistent page."""
        high = "+inf" if before is None else f"({before}"
        low = "-inf" if after is None else f"({after}"
        found: list[bytes] = []
        names: list[str] = []
        verified: list[str] = []
        budget = max_bytes
        # One instant for the whole page: its slices agree on what expired.
        kept = retention_args(self.retention, self._now_ms())
        while len(found) < limit:
            want = min(PAGE_SLICE, limit - len(found))
            first = not found
            entries, cut, online, marked = await self._commands.run(
                scripts.PAGE, high, low, want, budget, "1" if first else "0", *kept
            )
            if first:
                names = [name.decode() for name in online]
                verified = [name.decode() for name in marked]
            found += entries
            if cut or len(entries) < want:
                break
            if budget:
                budget -= sum(map(len, entries))
                if budget <= 0:
                    break
            high = f"({_entry_id(entries[-1])}"
        found.reverse()
        return Page(found, names, verified)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def entries(self, after: int, limit: int) -> "Deferred[list[tuple[int, bytes]]]":
        return Deferred.fromCoroutine(self._entries(after, limit))

    async def _entries(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """ENTRIES slices of ENTRIES_SLICE, each read at one instant (and
        retention applied as of then), oldest first."""
        found: list[tuple[int, bytes]] = []
        kept = retention_args(self.retention, self._now_ms())
        while len(found) < limit:
            want = min(ENTRIES_SLICE, limit - len(found))
            flat = await self._commands.run(scripts.ENTRIES, after, want, *kept)
            found += [
                (int(float(score)), entry)
                for entry, score in zip(flat[::2], flat[1::2], strict=True)
            ]
            if len(flat) < 2 * want:
                break
            after = found[-1][0]
        return found

    def import_entries(self, entries: list[Imported]) -> "Deferred[list[int]]":
        """One IMPORT script for the whole list: all stored, with new ids
        after every id handed out so far, or none (a batch the admin API
        accepted is under its 64 KiB body cap)."""
        if not entries:
            return succeed([])
        parts: list[bytes] = []
        for one in entries:
            parts += _split(one.name, one.content, one.timestamp, one.millis, one.mark)
        imported = self._commands.run(scripts.IMPORT, self.room_name, *parts)
        return imported.addCallback(lambda ids: [int(i) for i in ids])

    def expire(self, now_ms: int) -> "Deferred[int]":
        """EXPIRE on this room's keys (see expire_history), with no purge
        lease: the cluster's purge (chatbox.cluster.purge) runs it under one,
        on every room, loaded here or not. Nobody is told."""
        expired = Deferred.fromCoroutine(
            expire_history(self._commands, self.retention, now_ms)
        )
        return expired.addCallback(self._expired)

    def _expired(self, result: tuple[int, int]) -> int:
        removed = result[0]
        self._messages = max(0, self._messages - removed)
        return removed

    # -- the lease --

    def _lease_renewed(self, messages: int, gained: bool) -> None:
        if not self.room_name:
            self._messages = messages  # the heartbeat counts the default room's
        if gained:
            self._announce_ready()
            if self.room_name and self._reader.positioned(self._keys.events):
                self._follow_again()
        for holder in list(self._unreleased):
            self._release(holder)

    def _follow_again(self) -> None:
        """Back after a lost lease, whose reaping dropped this node from the
        room's followers: be one again (the room was counted already)."""
        again = self._commands.run(scripts.FOLLOW, self.node, self.room_name, 0)
        # Events while it was no follower rang no bell: read the room anyway.
        again.addCallback(lambda _: self._reader.read_again(self._keys.events))
        again.addErrback(lambda failure: failure.trap(RoomError))

    def _announce_ready(self) -> None:
        if self.ready and not self.room_name:
            self.log.info(
                "node {node} joined the chat cluster at {where}",
                node=self.node,
                where=self.where,
            )

    def _lease_lost(self, messages: int) -> None:
        if not self.room_name:
            self._messages = messages
        owners = list(self._names)
        for owner in owners:
            self._forget(owner)  # Redis released their holders already.
        self._register_again(
            "lost its lease (redis heard no heartbeat in time), so its "
            "nicknames were released",
            owners,
        )

    def _register_again(self, why: str, owners: list[Hashable]) -> None:
        """This node can no longer vouch for its clients' view of the chat:
        close their connections (1012) so each client reconnects and
        registers again, which gives it the whole truth."""
        self.log.warn(
            "node {node} {why}; closing its {count} registered connection(s)",
            node=self.node,
            why=why,
            count=len(owners),
        )
        self._lost(owners)

    # -- the event stream --

    def _missed_events(self) -> None:
        self._register_again(
            "missed events trimmed from the stream while it was away",
            list(self._names),
        )

    def _on_event(self, entry_id: bytes, fields: dict[bytes, bytes]) -> bool:
        """Deliver one event to this node's audience; False holds the reader
        at a claim's own event until the claim's reply has gone out."""
        origin = self._owner_of.get(fields[b"o"].decode())
        kind = fields[b"k"]
        if kind == b"register" and origin is not None:
            if origin in self._claiming:
                self._held_for = origin  # until its reply has gone out
                return False
            if origin in self._names:
                self._audience[origin] = None
        elif kind == b"message":
            self._messages += 1
            stamp = fields.get(b"ms")
            if stamp is not None:
                self._last_activity = int(stamp)
        elif kind == b"delete":
            # The history's size and newest time after the removal.
            self._messages = int(fields[b"count"])
            newest = int(fields[b"last"])
            self._last_activity = None if newest < 0 else newest
        try:
            event = _event(fields)
            if event is None:
                self.log.warn(
                    "skipped event {id} of unknown kind {kind!r} (a newer node's?)",
                    id=entry_id,
                    kind=kind,
                )
            else:
                self._deliver(event, origin)
        except Exception:
            self.log.failure("could not deliver event {id}", id=entry_id)
        return True

    def _resume(self) -> None:
        self._held_for = None
        self._reader.resume()

    # -- shutdown --

    def flush(self) -> "Deferred[None]":
        return self._commands.flush()

    def close(self) -> "Deferred[bool]":
        if self.room_name:
            return Deferred.fromCoroutine(self._unfollow())
        return Deferred.fromCoroutine(self._close())

    async def _unfollow(self) -> bool:
        """A named room unloaded: stop reading its stream, and tell Redis
        this node no longer follows it, releasing any name it still holds
        there (its connections are gone; a release in doubt is done here).
        If that fails, the node's lease covers it: its reaper, or its own
        RETIRE, releases them."""
        await self.flush()
        self._reader.unfollow(self._keys.events)
        if self._watcher is not None:
            self._lease.unwatch(self._watcher)
        when = Timestamps(self._clock.seconds).now()
        try:
            _, forgotten = await self._commands.run(
                scripts.UNFOLLOW, self.node, self.room_name, *when, STREAM_LENGTH
            )
        except RoomError as e:
            self.log.warn(
                "room {name}: could not tell redis this node left it: {error}",
                name=self.room_name,
                error=e,
            )
            return False
        self.forgotten = bool(forgotten)
        return True

    async def _close(self) -> bool:
        await self.flush()
        complete = True
        try:
            released = await self._lease.retire()
            self.log.info(
                "node {node} left the chat cluster ({count} nickname(s) released)",
                node=self.node,
                count=released,
            )
        except RoomError as e:
            complete = False
            self.log.warn(
                "could not leave the cluster cleanly ({error}); other nodes "
                "release this node's nicknames when its lease runs out",
                error=e,
            )
        await self._reader.stop()
        await self._commands.stop()
        return complete
