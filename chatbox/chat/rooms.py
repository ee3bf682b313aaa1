"""Which rooms exist, which are in memory, and who is in each.

`Rooms` is the one owner of the set of loaded rooms. A connection enters a
room at its handshake and leaves it when it closes; a room nobody has been
in for `idle` seconds is closed (its journal folded, its files released),
so a server with a thousand rooms holds only the busy ones. The default
room, the chat v2 clients have always joined at `/`, is loaded at start-up
and never unloaded.

Entering counts at once, before the room has loaded: a room is never
unloaded under a connection that is still handshaking, and one that is
being closed when someone arrives is loaded again once the close is done,
so no message is written by two owners of the same files.

The backend (`IRoomMaker`: chatbox.local.rooms, chatbox.cluster.rooms) makes
and closes rooms; this module knows nothing of files or Redis.
"""

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from chatbox.chat.room import IRoom
from chatbox.chat.roomnames import DEFAULT, NotARoom, check_name, room_of_path

__all__ = [
    "IRoomMaker",
    "RoomPolicy",
    "RoomRefused",
    "Rooms",
    "Unloaded",
    "parse_room_list",
]

# A room that failed to load is refused at once for this long, so a client
# retrying (or an attacker) cannot make the server re-read a damaged file
# many times a second.
FAILED_LOAD_SECONDS = 10.0
# A room nobody ever wrote in keeps nothing worth holding: it is unloaded
# this soon after its last connection left (or --room-idle, if shorter),
# and frees its place under --max-rooms.
EMPTY_IDLE_SECONDS = 5.0
# Rooms nobody is in kept loaded at most, the longest idle unloaded first
# past that: one address touching every room of a long list in turn cannot
# hold them all in memory.
IDLE_ROOMS_KEPT = 32


class RoomRefused(Exception):
    """A connection cannot enter the room; `status` is the HTTP status of the
    handshake's refusal, str() its reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def parse_room_list(value: str) -> tuple[str, ...]:
    """Room names from a file, when the value names one (or has a `/` or
    `.`, which no room name has): one name per line, `#` comments; else from
    a comma list. Raises ValueError naming what is wrong (blocking: options
    only)."""
    if "/" in value or "." in value or os.path.isfile(value):
        try:
            # utf-8-sig: a byte-order mark (Windows Notepad's) is not a name.
            text = Path(value).read_text(encoding="utf-8-sig")
        except OSError as e:
            raise ValueError(f"cannot read {value}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{value} is not UTF-8 text") from None
        items = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        where = f" in {value}"
    else:
        items = [item.strip() for item in value.split(",")]
        where = ""
    names: list[str] = []
    for item in items:
        if not item:
            continue
        try:
            name = check_name(item)
        except NotARoom as e:
            raise ValueError(f"{item!r}{where}: {e}") from None
        if name not in names:
            names.append(name)
    return tuple(names)


class RoomPolicy(NamedTuple):
    """Which names may be rooms (besides the default, always there)."""

    open: bool = False  # any valid name, up to max_rooms
    names: frozenset[str] = frozenset()  # when not open: exactly these
    listed: tuple[str, ...] = ()  # shown by GET /rooms
    max_rooms: int = 1000

    @classmethod
    def from_options(cls, rooms: str, listed: str, max_rooms: int) -> "RoomPolicy":
        """Raises ValueError with a message fit for a usage error."""
        is_open = rooms.strip().lower() == "open"
        try:
            names = () if is_open or not rooms.strip() else parse_room_list(rooms)
        except ValueError as e:
            raise ValueError(f"--rooms: {e}") from None
        try:
            shown = parse_room_list(listed) if listed.strip() else ()
        except ValueError as e:
            raise ValueError(f"--listed-rooms: {e}") from None
        if not is_open:
            strays = [name for name in shown if name not in names]
            if strays:
                raise ValueError(
                    f"--listed-rooms names rooms --rooms does not: {', '.join(strays)}"
                )
        elif len(shown) > max_rooms:
            raise ValueError("--listed-rooms names more rooms than --max-rooms")
        return cls(is_open, frozenset(names), shown, max_rooms)

    @property
    def most_rooms(self) -> int:
        """Most named rooms that can ever be in memory at once."""
        return self.max_rooms if self.open else len(self.names)


class Unloaded(NamedTuple):
    complete: bool  # nothing is left for the next load to repair
    kept: bool  # still stored (a room that never held a message is not)


class IRoomMaker(Interface):
    """A backend's way to make and close rooms by name."""

    def stored() -> dict[str, int | None]:
        """Rooms with history in storage, each with its last activity (epoch
        ms, None if unknown). Blocking: called once, at start-up."""

    def make(name: str) -> "Deferred[IRoom]":
        """The room, loaded and started (off the reactor thread). Fails with
        RoomRefused to refuse the name (the client gets its status and
        reason as they are); any other failure is logged, and the client
        told only that the room is unavailable."""

    def unload(name: str, room: IRoom) -> "Deferred[Unloaded]":
        """Close a room nobody is in (and forget one that never held a
        message). Never fails."""

    def summary(name: str) -> "Deferred[tuple[int, int | None]]":
        """(online count, last activity) of a room not loaded here."""

    def names() -> "Deferred[list[str]]":
        """Named rooms the backend holds now that this process may never
        have seen (a cluster's rooms made on other nodes); a process that
        keeps its rooms to itself answers [] (its registry knows them)."""


class _Slot:
    """One room's place in the registry, loaded or on its way in or out."""

    __slots__ = ("closing", "fresh", "idle", "name", "room", "users", "waiters")

    def __init__(self, name: str) -> None:
        self.name = name
        self.room: IRoom | None = None
        self.users = 0
        self.waiters: list[Deferred[IRoom]] = []
        self.idle: IDelayedCall | None = None
        self.closing: Deferred[Unloaded] | None = None
        # Not known before this load: if it fails, the name holds no place.
        self.fresh = False


Attach = Callable[[str, IRoom], None]


class Rooms:
    log = Logger()

    def __init__(
        self,
        default: IRoom,
        maker: IRoomMaker,
        policy: RoomPolicy,
        reactor: IReactorTime,
        idle: float = 60.0,
    ) -> None:
        self.default = default
        self.policy = policy
        self._maker = maker
        self._reactor = reactor
        self._idle = idle
        self._attach: Attach = lambda name, room: None
        self._slots: dict[str, _Slot] = {}
        slot = self._slots[DEFAULT] = _Slot(DEFAULT)
        slot.room = default
        # Named rooms that exist (stored, or loaded now), with their last
        # activity as last known: what --max-rooms counts and /rooms shows.
        self._known: dict[str, int | None] = (
            dict(maker.stored()) if (policy.open or policy.listed) else {}
        )
        self._failed: dict[str, tuple[float, str]] = {}
        # Loaded rooms nobody is in, the longest idle first.
        self._idling: dict[str, _Slot] = {}
        self._closing_all = False
        self.loads = 0
        self.unloads = 0

    def attach(self, attach: Attach) -> None:
        """`attach(name, room)` is called for every room as it is loaded
        (the default room included, now), before anyone enters it."""
        self._attach = attach
        attach(DEFAULT, self.default)

    # -- entering and leaving --

    @property
    def named(self) -> bool:
        """Whether there are rooms besides the default one (--rooms)."""
        return self.policy.open or bool(self.policy.names)

    def socket_room(self, path: str) -> str:
        """The room a WebSocket to `path` enters, or NotARoom. Without named
        rooms (no --rooms, the default) every path is the default room, as
        every path was the one chat before rooms: a v2 client pointed at
        ws://HOST:PORT/chat keeps working."""
        return room_of_path(path) if self.named else DEFAULT

    def is_new(self, name: str) -> bool:
        """Whether entering `name` would make a room (`--rooms open`)."""
        return (
            self.policy.open
            and name != DEFAULT
            and name not in self._slots
            and name not in self._known
            and name not in self.policy.listed
        )

    def refusal(self, name: str) -> RoomRefused | None:
        """Why a connection may not enter `name` now, if it may not."""
        if name == DEFAULT or name in self._slots:
            return None
        policy = self.policy
        if not policy.open:
            if name not in policy.names:
                return RoomRefused(404, "no such room")
        elif self.is_new(name) and self._made_count() >= policy.max_rooms:
            return RoomRefused(
                404, "no such room, and the server's room limit is reached"
            )
        failed = self._failed.get(name)
        if failed is not None:
            until, reason = failed
            if self._reactor.seconds() < until:
                return RoomRefused(503, reason)
            del self._failed[name]
        return None

    def _made_count(self) -> int:
        """Rooms counted under --max-rooms: the operator's listed rooms
        always have their place, so strangers filling the limit cannot shut
        them out."""
        listed = sum(1 for name in self.policy.listed if name in self._known)
        return len(self._known) - listed

    def enter(self, name: str) -> "Deferred[IRoom]":
        """The room, once loaded; the caller must `leave(name)` once for
        every enter that succeeded. Fails with RoomRefused."""
        refused = self.refusal(name)
        if refused is not None:
            return fail(refused)
        if self._closing_all:
            return fail(RoomRefused(503, "server shutting down"))
        slot = self._slots.get(name)
        if slot is None:
            slot = self._slots[name] = _Slot(name)
            slot.fresh = name not in self._known
            self._known.setdefault(name, None)
            self._load(slot)
        slot.users += 1
        self._stop_idle(slot)
        if slot.room is not None:
            return succeed(slot.room)
        waiter: Deferred[IRoom] = Deferred()
        slot.waiters.append(waiter)
        return waiter

    def leave(self, name: str) -> None:
        slot = self._slots[name]
        slot.users -= 1
        if slot.users == 0 and name != DEFAULT and slot.room is not None:
            self._idle_from_now(slot)

    def _idle_from_now(self, slot: _Slot) -> None:
        if self._closing_all:
            return
        assert slot.room is not None
        wait = self._idle
        if slot.room.message_count() == 0:
            wait = min(wait, EMPTY_IDLE_SECONDS)
        slot.idle = self._reactor.callLater(wait, self._unload, slot)
        self._idling[slot.name] = slot
        while len(self._idling) > IDLE_ROOMS_KEPT:
            oldest = next(iter(self._idling.values()))
            self._stop_idle(oldest)
            self._unload(oldest)

    def _stop_idle(self, slot: _Slot) -> None:
        if slot.idle is not None:
            if slot.idle.active():
                slot.idle.cancel()
            slot.idle = None
        self._idling.pop(slot.name, None)

    def _load(self, slot: _Slot) -> None:
        made = self._maker.make(slot.name)
        made.addCallbacks(self._loaded, self._not_loaded, (slot,), None, (slot,))

    def _loaded(self, room: IRoom, slot: _Slot) -> None:
        self.loads += 1
        slot.room = room
        self._attach(slot.name, room)
        waiters, slot.waiters = slot.waiters, []
        for waiter in waiters:
            waiter.callback(room)
        # Everyone gave up while it loaded. A connection that closed during
        # the load leaves from its waiter's callback above, which already
        # started the idle time: a second timer would outlive the first's
        # cancel and unload the room under whoever comes in next.
        if slot.users == 0 and slot.idle is None:
            self._idle_from_now(slot)

    def _not_loaded(self, failure: Failure, slot: _Slot) -> None:
        del self._slots[slot.name]
        if failure.check(RoomRefused):
            # The backend's decision, not a fault (a cluster's room limit,
            # counted in Redis): passed on as it is, not remembered, and
            # the name is not a room.
            refused = failure.value
            self._known.pop(slot.name, None)
        else:
            # The details (a file's path, say) are for the operator's log only.
            reason = "room unavailable: the server could not load it"
            self.log.error(
                "could not load room {name}: {error}",
                name=slot.name,
                error=failure.getErrorMessage(),
            )
            self._failed[slot.name] = (
                self._reactor.seconds() + FAILED_LOAD_SECONDS,
                reason,
            )
            refused = RoomRefused(503, reason)
            if slot.fresh:  # no history, so no place under --max-rooms
                self._known.pop(slot.name, None)
        waiters, slot.waiters = slot.waiters, []
        for waiter in waiters:
            waiter.errback(refused)

    def _unload(self, slot: _Slot) -> None:
        self._stop_idle(slot)
        room, slot.room = slot.room, None
        assert room is not None
        # Known at once, not when closed: GET /rooms reads it while the room
        # closes, and would otherwise show a room with history as never used.
        self._known[slot.name] = room.last_activity()
        slot.closing = self._maker.unload(slot.name, room)

        def closed(unloaded: Unloaded) -> None:
            self.unloads += 1
            slot.closing = None
            if not unloaded.kept:
                self._known.pop(slot.name, None)
            if slot.users > 0:  # someone arrived while it closed
                slot.fresh = slot.name not in self._known
                self._known.setdefault(slot.name, None)
                self._load(slot)
            else:
                del self._slots[slot.name]

        slot.closing.addCallback(closed)

    # -- what is there --

    # These are read by /metrics too, which prometheus_client serves from a
    # pool thread: each takes a snapshot of the slots first (one C call, so
    # the reactor thread cannot resize the dict under it) and never
    # iterates the live dict.

    def _now(self) -> tuple[_Slot, ...]:
        return tuple(self._slots.values())

    def every_room(self) -> list[str]:
        """Every room that may hold history, loaded or not: the default room
        first, then the named ones (stored, listed, or loaded now) by name.
        What the operator's whole-server actions walk (retention's purge,
        backup, erasing a person); each is entered with `enter` for the
        while."""
        named = set(self._known) | set(self.policy.names)
        named.update(name for name in self._slots if name != DEFAULT)
        return [DEFAULT, *sorted(named)]

    async def all_rooms(self) -> list[str]:
        """`every_room`, plus the rooms the backend holds that this process
        has never seen (on a cluster, those made on other nodes)."""
        known = self.every_room()
        more = set(await self._maker.names()) - set(known)
        return [*known, *sorted(more)]

    async def exists(self, name: str) -> bool:
        """Whether room `name` is there to act on without making it: the
        default room, one this process knows, or one the backend holds."""
        if name == DEFAULT or not self.is_new(name):
            return True
        return name in await self._maker.names()

    def loaded(self) -> Iterable[tuple[str, IRoom]]:
        return [(s.name, s.room) for s in self._now() if s.room is not None]

    def open_count(self) -> int:
        """Rooms someone is in (or entering)."""
        return sum(1 for slot in self._now() if slot.users > 0)

    def loaded_count(self) -> int:
        return sum(1 for slot in self._now() if slot.room is not None)

    def registered_count(self) -> int:
        """This process's connections holding a nickname, in every room."""
        return sum(room.registered_count() for _, room in self.loaded())

    def message_count(self) -> int:
        """Messages in the histories of the rooms in memory."""
        return sum(room.message_count() for _, room in self.loaded())

    def listing(self) -> "Deferred[list[dict[str, Any]]]":
        """The listed rooms for GET /rooms: name, online, last_activity."""
        return Deferred.fromCoroutine(self._listing())

    async def _listing(self) -> list[dict[str, Any]]:
        shown = []
        for name in sorted(self.policy.listed):
            slot = self._slots.get(name)
            if slot is not None and slot.room is not None:
                online = await slot.room.online_count()
                last = slot.room.last_activity()
            else:
                online, last = await self._maker.summary(name)
                if last is None:
                    last = self._known.get(name)
            shown.append({"name": name, "online": online, "last_activity": last})
        return shown

    # -- shutdown --

    def flush(self) -> "Deferred[Any]":
        """Fires once every loaded room has settled what it accepted."""
        return DeferredList([room.flush() for _, room in self.loaded()])

    def close(self) -> "Deferred[bool]":
        """Close every room (the default last); True if all were complete."""
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> bool:
        self._closing_all = True
        complete = True
        for slot in list(self._slots.values()):
            self._stop_idle(slot)
        while True:
            slots = list(self._slots.values())
            busy = [s.closing for s in slots if s.closing is not None]
            loading = [s for s in slots if s.room is None and s.closing is None]
            busy += [self._settled(s) for s in loading]
            if not busy:
                break
            await DeferredList(busy)
        for slot in list(self._slots.values()):
            if slot.name == DEFAULT or slot.room is None:
                continue
            room, slot.room = slot.room, None
            unloaded = await self._maker.unload(slot.name, room)
            complete = complete and unloaded.complete
        return bool(await self.default.close()) and complete

    def _settled(self, slot: _Slot) -> "Deferred[None]":
        """Fires when a room still loading has loaded or failed."""
        waiter: Deferred[IRoom] = Deferred()
        slot.waiters.append(waiter)
        return waiter.addBoth(lambda _: None)
