"""A room shared by several chatbox nodes through Redis.

Each node is one chatbox process. The cluster's state lives in Redis and is
changed only by the Lua scripts of chatbox.cluster.scripts, each atomic, each
writing its event to one Redis stream in the same step. Why a stream and not
pub/sub: pub/sub forgets what a node missed while its connection was down,
so a Redis restart would silently lose joins and leaves. A stream keeps
them: every node reads it from the last entry it handled, so after any
reconnect it carries on with the next event, exactly once, in the one order
Redis wrote them (which is each originating node's order too).

A node keeps, for its own connections only, who is registered under which
name (so a request is checked at once) and which holder id stands for each
in Redis. A connection joins the node's audience at its own `register`
event in the stream: from then on it gets every event, exactly once, and
none from before. If the stream reaches that event before the claim's reply,
reading waits for the reply, so the client sees its reply first.

Leases: each node renews its lease every `lease / 6` seconds for `0.6 *
lease`, in Redis' clock. Whichever node's heartbeat first finds a lease run
out releases that node's names, with a leave each (one script, so exactly
once). So a node that dies has its names freed within `0.6 + 1/6` of
`lease` (plus a script's time), and a node survives two missed renewals
(the third comes at half the lease). A node that finds its own lease gone
closes its registered connections (1012) so their clients register again.
"""

import itertools
import uuid
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatbox.chat.arns import NameTaken, name_keys
from chatbox.chat.room import Deliver, IRoom, RoomError
from chatbox.cluster import scripts
from chatbox.cluster.address import RedisAddress
from chatbox.cluster.link import RedisInDoubt, RedisLink
from chatbox.wire import codec, messages
from chatbox.wire.clock import Timestamps

__all__ = ["DEFAULT_PREFIX", "RedisRoom", "entry_template"]

DEFAULT_PREFIX = "chatbox:"
# Events kept in the stream (approximately; Redis trims whole blocks). A node
# reads them as they come; this only bounds how long one may be away.
STREAM_LENGTH = 100_000
READ_BATCH = 1000
# History entries one PAGE call returns at most: a bare `get` of 10,000
# entries is a few dozen short calls, each leaving Redis free in between.
PAGE_SLICE = 500
READ_BLOCK_MS = 1000
RETRY_SECONDS = 0.25

_NOT_READY = "not connected to the chat cluster yet"
_NAME_LOST = "nickname lost, reconnect"


def entry_template(name: str, content: str, timestamp: str) -> tuple[bytes, bytes]:
    """The history entry of chatbox.wire.messages, split around its id, which
    only Redis knows until the message is stored."""
    encoded = codec.encode(messages.history_entry(0, name, content, timestamp))
    head, _, tail = encoded.partition(b'"id":0')
    return head + b'"id":', tail


def _entry_id(entry: bytes) -> int:
    """The id of an encoded history entry, which entry_template puts first."""
    return int(entry[len(b'{"id":') : entry.index(b",")])


def _stream_id(raw: bytes) -> tuple[int, int]:
    millis, _, sequence = raw.partition(b"-")
    return int(millis), int(sequence or 0)


def _event(fields: dict[bytes, bytes]) -> messages.Message:
    """The wire event for one stream entry; its shape is chatbox.wire.messages'."""
    kind = fields[b"k"]
    name = fields[b"n"].decode()
    timestamp = fields[b"t"].decode()
    if kind == b"message":
        content = fields[b"c"].decode()
        return messages.posted(name, content, timestamp, int(fields[b"id"]))
    if kind == b"register":
        return messages.joined(name, timestamp)
    if kind == b"change":
        return messages.renamed(fields[b"old"].decode(), name, timestamp)
    return messages.left(name, timestamp)


@implementer(IRoom)
class RedisRoom:
    log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        lease: float = 15.0,
        timeout: float = 5.0,
        prefix: str = DEFAULT_PREFIX,
        node: str | None = None,
    ) -> None:
        self.node = node or uuid.uuid4().hex[:12]
        self.where = str(address)
        self._reactor = reactor
        self._keys = scripts.keys(prefix)
        self._events_key = self._keys[scripts.KEYS.index("events")]
        self._lease_ms = int(lease * 1000 * 0.6)
        self._beat_every = lease / 6
        self._timestamps = Timestamps(reactor.seconds)
        self._commands = RedisLink(address, reactor, timeout, "redis")
        self._reader = RedisLink(address, reactor, timeout, "redis event reader")
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
        self._unreleased: dict[str, str] = {}
        self._releasing: set[str] = set()
        self._in_flight: set[Deferred] = set()

        self._leased = False
        self._beating = False
        self._heart = LoopingCall(self._beat)
        self._heart.clock = reactor
        self._messages = 0

        self._reading = False
        self._read_from: bytes | None = None  # the last entry received
        self._entries_read = 0  # the stream's entries-added at _read_from
        self._reader_came_back = False
        self._backlog: deque[tuple[bytes, list[bytes]]] = deque()
        self._held_for: Hashable | None = None  # reading waits for its reply
        self._drained: Deferred[None] | None = None

    # -- IRoom: set-up and state --

    def attach(self, deliver: Deliver, lost: Callable[[list[Any]], None]) -> None:
        self._deliver = deliver
        self._lost = lost

    def start(self) -> None:
        self._commands.on_up(self._beat)  # which retries pending releases
        self._reader.on_up(self._reader_reconnected)
        self._commands.start()
        self._reader.start()
        self._heart.start(self._beat_every, now=False)
        self._reading = True
        reading = Deferred.fromCoroutine(self._read_events())
        reading.addErrback(lambda f: self.log.failure("the event reader stopped", f))

    @property
    def ready(self) -> bool:
        """Leased, and reading the stream from a known place."""
        return self._leased and self._read_from is not None

    @property
    def healthy(self) -> bool:
        return self.ready and self._commands.up and self._reader.up

    def health(self) -> dict[str, Any]:
        return {
            "redis": "ok" if self._commands.up and self._reader.up else "unavailable",
            "node": self.node,
            "lease": "held" if self._leased else "none",
        }

    def name_of(self, owner: Hashable) -> str | None:
        return self._names.get(owner)

    def audience(self) -> Iterable[Hashable]:
        return list(self._audience)

    def registered_count(self) -> int:
        return len(self._names)

    def message_count(self) -> int:
        return self._messages

    # -- IRoom: requests --

    def _script(self, script: bytes, *args: object) -> Deferred:
        """Run a script; the Deferred is tracked until settled, for flush()."""
        running = self._commands.eval(script, self._keys, args)
        self._in_flight.add(running)

        def settled(result: object) -> object:
            self._in_flight.discard(running)
            return result

        return running.addBoth(settled)

    def _name_script(
        self, script: bytes, holder: str, name: str, timestamp: str, refused: str
    ) -> "Deferred[bytes]":
        """CLAIM or RENAME, which take the same arguments and answer alike:
        fires with the stream id of the event; fails with NameTaken, or with
        RoomError(`refused`) when this node cannot vouch for the holder."""
        running = self._script(
            script,
            self.node,
            holder,
            "\n".join(name_keys(name)),
            name,
            timestamp,
            STREAM_LENGTH,
        )

        def answered(result: object) -> bytes:
            if result == 0:
                raise NameTaken(name)
            if not isinstance(result, bytes):
                raise RoomError(refused)
            return result

        return running.addCallback(answered)

    def claim(self, owner: Hashable, name: str, timestamp: str) -> "Deferred[None]":
        if not self.ready:
            return fail(RoomError(_NOT_READY))
        holder = f"{self.node}:{next(self._serial)}"
        self._holder_of[owner] = holder
        self._owner_of[holder] = owner
        self._claiming.add(owner)
        claimed = self._name_script(scripts.CLAIM, holder, name, timestamp, _NOT_READY)

        def decided(event_id: bytes) -> None:
            if self._holder_of.get(owner) != holder:
                return
            self._names[owner] = name
            if self._read_from is not None and (
                _stream_id(self._read_from) >= _stream_id(event_id)
            ):
                # The stream passed the claim's event before this reply
                # (only if it was trimmed or read around): join now.
                self._audience[owner] = None

        def failed(failure: Failure) -> Failure:
            # Unless the connection has gone (and released the holder) meanwhile:
            if self._holder_of.get(owner) == holder:
                if failure.check(RedisInDoubt):
                    # The claim may have happened: free whatever it got. A
                    # new claim gets a new holder.
                    self.release(owner, timestamp)
                else:
                    self._forget(owner)
            return failure

        def finished(result: object) -> object:
            self._claiming.discard(owner)
            if self._held_for is owner:
                # After the protocol has sent its reply.
                self._reactor.callLater(0, self._resume)
            return result

        return claimed.addCallbacks(decided, failed).addBoth(finished)

    def rename(self, owner: Hashable, name: str, timestamp: str) -> "Deferred[str]":
        holder = self._holder_of.get(owner)
        old = self._names.get(owner)
        if holder is None or old is None:
            return fail(RoomError(_NAME_LOST))
        if not self.ready:
            return fail(RoomError(_NOT_READY))
        renamed = self._name_script(scripts.RENAME, holder, name, timestamp, _NAME_LOST)

        def decided(_: bytes) -> str:
            if self._holder_of.get(owner) == holder:
                self._names[owner] = name
            return old

        def failed(failure: Failure) -> Failure:
            if failure.check(RedisInDoubt) and self._holder_of.get(owner) == holder:
                # Which name it holds now is unknown here: have its client
                # reconnect and register again, rather than guess.
                self._reactor.callLater(0, self._lost, [owner])
            return failure

        return renamed.addCallbacks(decided, failed)

    def release(self, owner: Hashable, timestamp: str) -> str | None:
        name = self._names.get(owner)
        holder = self._forget(owner)
        if holder is not None:
            self._unreleased[holder] = timestamp
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
        released = self._script(
            scripts.RELEASE,
            self.node,
            holder,
            self._unreleased[holder],
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
        self, owner: Hashable, name: str, content: str, timestamp: str
    ) -> "Deferred[int]":
        holder = self._holder_of.get(owner)
        if holder is None:
            return fail(RoomError(_NAME_LOST))
        head, tail = entry_template(name, content, timestamp)
        posted = self._script(
            scripts.POST,
            self.node,
            holder,
            name,
            content,
            timestamp,
            head,
            tail,
            STREAM_LENGTH,
        )

        def stored(result: object) -> int:
            if result == -1:
                raise RoomError(_NAME_LOST)
            return int(result)

        return posted.addCallback(stored)

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
            entries, cut, online = await self._script(
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

    def _beat(self) -> None:
        if self._beating or not self._commands.up:
            return
        self._beating = True
        beat = self._script(
            scripts.HEARTBEAT,
            self.node,
            self._lease_ms,
            self._timestamps.now(),
            STREAM_LENGTH,
            "0" if self._leased else "1",
        )

        def renewed(result: list[int]) -> None:
            held, released, stored = result
            self._messages = stored
            if released:
                self.log.info(
                    "released {count} nickname(s) of nodes whose lease ran out",
                    count=released,
                )
            if held:
                if not self._leased:
                    self._leased = True
                    self._announce_ready()
                for holder in list(self._unreleased):
                    self._release(holder)
            else:
                self._lease_lost()

        def failed(failure: Failure) -> None:
            failure.trap(RoomError)
            self.log.warn("heartbeat failed: {error}", error=failure.value)

        def settled(_: object) -> None:
            self._beating = False

        beat.addCallbacks(renewed, failed)
        beat.addBoth(settled)

    def _announce_ready(self) -> None:
        if self.ready:
            self.log.info(
                "node {node} joined the chat cluster at {where}",
                node=self.node,
                where=self.where,
            )

    def _lease_lost(self) -> None:
        self._leased = False
        owners = list(self._names)
        for owner in owners:
            self._forget(owner)  # Redis released their holders already.
        self._register_again(
            "lost its lease (redis heard no heartbeat in time), so its "
            "nicknames were released",
            owners,
        )
        self._reactor.callLater(0, self._beat)  # join again at once

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

    async def _read_events(self) -> None:
        while self._reading:
            try:
                if self._read_from is None:
                    newest, added, _ = await self._stream_state()
                    self._read_from, self._entries_read = newest, added
                    self._announce_ready()
                elif self._reader_came_back:
                    await self._check_for_gap()
                reply = await self._reader.execute(
                    "XREAD",
                    "COUNT",
                    READ_BATCH,
                    "BLOCK",
                    READ_BLOCK_MS,
                    "STREAMS",
                    self._events_key,
                    self._read_from,
                )
            except RoomError:
                if self._reading:
                    await deferLater(self._reactor, RETRY_SECONDS, lambda: None)
                continue
            if not reply:
                continue
            entries = reply[0][1]
            self._read_from = entries[-1][0]
            self._entries_read += len(entries)
            self._backlog.extend(entries)
            self._dispatch()
            if self._backlog:
                self._drained = Deferred()
                await self._drained

    def _stream_state(self) -> Deferred:
        return self._reader.eval(scripts.STREAM_STATE, self._keys, [])

    def _reader_reconnected(self) -> None:
        self._reader_came_back = True

    async def _check_for_gap(self) -> None:
        """After a reconnect: if Redis trimmed events this node had not read
        (it was away while more than the stream holds went by), its clients
        missed joins, leaves or messages."""
        _, added, kept = await self._stream_state()
        self._reader_came_back = False
        if added - self._entries_read > kept:
            self._register_again(
                "missed events trimmed from the stream while it was away",
                list(self._names),
            )

    def _dispatch(self) -> None:
        backlog = self._backlog
        while backlog and self._held_for is None:
            entry_id, flat = backlog[0]
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            origin = self._owner_of.get(fields[b"o"].decode())
            kind = fields[b"k"]
            if kind == b"register" and origin is not None:
                if origin in self._claiming:
                    self._held_for = origin  # until its reply has gone out
                    return
                if origin in self._names:
                    self._audience[origin] = None
            elif kind == b"message":
                self._messages += 1
            backlog.popleft()
            try:
                self._deliver(_event(fields), origin)
            except Exception:
                self.log.failure("could not deliver event {id}", id=entry_id)
        if not backlog and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def _resume(self) -> None:
        self._held_for = None
        self._dispatch()

    # -- shutdown --

    def flush(self) -> "Deferred[None]":
        if not self._in_flight:
            return succeed(None)
        waiting = DeferredList(list(self._in_flight), consumeErrors=True)
        return waiting.addCallback(lambda _: None)

    def close(self) -> "Deferred[bool]":
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> bool:
        await self.flush()
        if self._heart.running:
            self._heart.stop()
        complete = True
        try:
            released = await self._script(
                scripts.RETIRE, self.node, self._timestamps.now(), STREAM_LENGTH
            )
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
        self._leased = False
        self._reading = False
        await self._reader.stop()
        await self._commands.stop()
        return complete
