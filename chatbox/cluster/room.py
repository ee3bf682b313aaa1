# -*- test-case-name: tests.unit.test_cluster_units -*-
"""A room shared by several chatbox nodes through Redis.

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
from chatbox.chat.room import Deliver, IRoom, Posted, RoomError, posted_from
from chatbox.cluster import scripts
from chatbox.cluster.address import RedisAddress
from chatbox.cluster.commands import Commands
from chatbox.cluster.keys import DEFAULT_PREFIX, STREAM_LENGTH, Keys
from chatbox.cluster.lease import Lease
from chatbox.cluster.link import RedisInDoubt, RedisLink
from chatbox.cluster.reader import EventReader
from chatbox.wire import codec, messages
from chatbox.wire.clock import Moment, time_of

__all__ = ["DEFAULT_PREFIX", "RedisRoom", "entry_template"]

# History entries one PAGE call returns at most: a bare `get` of 10,000
# entries is a few dozen short calls, each leaving Redis free in between.
PAGE_SLICE = 500
# Seconds an online count read from Redis is answered from.
COUNT_FOR = 1.0

_NOT_READY = "not connected to the chat cluster yet"
_NAME_LOST = "nickname lost, reconnect"


def entry_template(name: str, content: str, when: Moment) -> tuple[bytes, bytes]:
    """The history entry of chatbox.wire.messages, split around its id, which
    only Redis knows until the message is stored."""
    entry = messages.history_entry(0, name, content, when.text, when.millis)
    encoded = codec.encode(entry)
    head, _, tail = encoded.partition(b'"id":0')
    return head + b'"id":', tail


def _entry_id(entry: bytes) -> int:
    """The id of an encoded history entry, which entry_template puts first."""
    return int(entry[len(b'{"id":') : entry.index(b",")])


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
        return messages.posted(name, content, when, int(fields[b"id"]))
    if kind == b"register":
        return messages.joined(name, when)
    if kind == b"change":
        return messages.renamed(fields[b"old"].decode(), name, when)
    if kind == b"leave":
        return messages.left(name, when)
    return None


@implementer(IRoom)
class RedisRoom:
    log = Logger()

    def __init__(
        self, commands: Commands, reader: EventReader, lease: Lease, clock: Any
    ) -> None:
        self.node = lease.node
        self.where = str(commands.address)
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

        reader.attach(self._on_event, self._announce_ready, self._missed_events)
        lease.watch(self._lease_renewed, self._lease_lost)

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
        """The room of a new node (`node` names it, else a random id) of
        the cluster at `address`, with its own two connections to it."""
        keys = Keys.under(prefix)
        commands = Commands(RedisLink(address, reactor, timeout, "redis"), keys)
        reader = EventReader(
            RedisLink(address, reactor, timeout, "redis event reader"), keys, reactor
        )
        node = node or uuid.uuid4().hex[:12]
        return cls(commands, reader, Lease(commands, reactor, node, lease), reactor)

    # -- IRoom: set-up and state --

    def attach(self, deliver: Deliver, lost: Callable[[list[Any]], None]) -> None:
        self._deliver = deliver
        self._lost = lost

    def start(self) -> None:
        self._lease.start()  # whose heartbeats retry pending releases
        self._commands.start()
        self._reader.start()

    @property
    def ready(self) -> bool:
        """Leased, and reading the stream from a known place."""
        return self._lease.held and self._reader.positioned

    @property
    def healthy(self) -> bool:
        return self.ready and self._commands.up and self._reader.up

    def health(self) -> dict[str, Any]:
        return {
            "redis": "ok" if self._commands.up and self._reader.up else "unavailable",
            "node": self.node,
            "lease": "held" if self._lease.held else "none",
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
        self, script: bytes, holder: str, name: str, when: Moment, refused: str
    ) -> "Deferred[bytes]":
        """CLAIM or RENAME, which take the same arguments and answer alike:
        fires with the stream id of the event; fails with NameTaken, or with
        RoomError(`refused`) when this node cannot vouch for the holder."""
        running = self._commands.run(
            script,
            self.node,
            holder,
            "\n".join(name_keys(name)),
            name,
            when.text,
            when.millis,
            STREAM_LENGTH,
        )

        def answered(result: object) -> bytes:
            if result == 0:
                raise NameTaken(name)
            if not isinstance(result, bytes):
                raise RoomError(refused)
            return result

        return running.addCallback(answered)

    def claim(self, owner: Hashable, name: str, when: Moment) -> "Deferred[None]":
        if not self.ready:
            return fail(RoomError(_NOT_READY))
        holder = f"{self.node}:{next(self._serial)}"
        self._holder_of[owner] = holder
        self._owner_of[holder] = owner
        self._claiming.add(owner)
        claimed = self._name_script(scripts.CLAIM, holder, name, when, _NOT_READY)

        def decided(event_id: bytes) -> None:
            if self._holder_of.get(owner) != holder:
                return
            self._names[owner] = name
            if self._reader.passed(event_id):
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

    def rename(self, owner: Hashable, name: str, when: Moment) -> "Deferred[str]":
        holder = self._holder_of.get(owner)
        old = self._names.get(owner)
        if holder is None or old is None:
            return fail(RoomError(_NAME_LOST))
        if not self.ready:
            return fail(RoomError(_NOT_READY))
        renamed = self._name_script(scripts.RENAME, holder, name, when, _NAME_LOST)

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
    ) -> "Deferred[Posted]":
        holder = self._holder_of.get(owner)
        if holder is None:
            return fail(RoomError(_NAME_LOST))
        head, tail = entry_template(name, content, when)
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
    ) -> "Deferred[tuple[list[bytes], list[str]]]":
        return Deferred.fromCoroutine(self._page(limit, before, after, max_bytes))

    async def _page(
        self, limit: int, before: int | None, after: int | None, max_bytes: int
    ) -> tuple[list[bytes], list[str]]:
        """Newest first, slice by slice, each below the last: history only
        grows above, so the slices join into one consistent page."""
        high = "+inf" if before is None else f"({before}"
        low = "-inf" if after is None else f"({after}"
        found: list[bytes] = []
        names: list[str] = []
        budget = max_bytes
        while len(found) < limit:
            want = min(PAGE_SLICE, limit - len(found))
            first = not found
            entries, cut, online = await self._commands.run(
                scripts.PAGE, high, low, want, budget, "1" if first else "0"
            )
            if first:
                names = [name.decode() for name in online]
            found += entries
            if cut or len(entries) < want:
                break
            if budget:
                budget -= sum(map(len, entries))
                if budget <= 0:
                    break
            high = f"({_entry_id(entries[-1])}"
        found.reverse()
        return found, names

    # -- the lease --

    def _lease_renewed(self, messages: int, gained: bool) -> None:
        self._messages = messages
        if gained:
            self._announce_ready()
        for holder in list(self._unreleased):
            self._release(holder)

    def _announce_ready(self) -> None:
        if self.ready:
            self.log.info(
                "node {node} joined the chat cluster at {where}",
                node=self.node,
                where=self.where,
            )

    def _lease_lost(self, messages: int) -> None:
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
        return Deferred.fromCoroutine(self._close())

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
