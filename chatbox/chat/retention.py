"""How long history is kept: by age and by count, for the whole server and
per room.

A message is *expired* once it is older than its room's `days`, or once
`messages` newer messages follow it in its room. Expired messages are cut
from the oldest end only, so what a room keeps is always one unbroken run
of its newest messages: `first_kept` finds where that run starts with a
binary search over the entries' times (ids rise with the server's clock),
so a read can apply retention at once, at the cost of a few decodes, long
before the purger has removed anything from storage.

An entry whose time cannot be read (a v2 import with a timestamp chatbox
cannot parse) counts as older than any age limit.

The purge itself belongs to each backend (`IPurger`): one process removes
expired messages from its files, a cluster from Redis, by one node at a
time under a lease. `PurgeService` only runs it on a timer, for every room
stored, loaded or not, so a room nobody visits is purged too.
"""

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from zope.interface import Interface

from chatbox.chat.roomnames import DEFAULT, NotARoom, check_name

__all__ = [
    "DAY_MS",
    "KEEP_ALL",
    "NO_RETENTION",
    "IPurger",
    "PurgeFailed",
    "PurgeService",
    "Retention",
    "RetentionPolicy",
    "first_kept",
]

DAY_MS = 86_400_000

log = Logger(namespace="chatbox.retention")


class Retention(NamedTuple):
    """One room's limits; 0 means no limit of that kind."""

    days: float = 0.0
    messages: int = 0

    @property
    def keeps_all(self) -> bool:
        return not self.days and not self.messages

    def oldest_kept_ms(self, now_ms: int) -> int | None:
        """Messages posted before this instant (epoch ms) are expired; None
        without an age limit."""
        if not self.days:
            return None
        # min: `--retention-days inf` is a float too, and int(inf) raises.
        return now_ms - int(min(self.days * DAY_MS, now_ms + 1))

    def describe(self) -> str:
        """For the start-up log: an operator sees what is kept where."""
        if self.keeps_all:
            return "kept forever"
        parts = []
        if self.days:
            parts.append(f"kept for {self.days:g} days")
        if self.messages:
            parts.append(f"only the newest {self.messages}")
        return ", ".join(parts)


KEEP_ALL = Retention()


def first_kept(
    count: int, time_at: Callable[[int], int | None], retention: Retention, now_ms: int
) -> int:
    """The index of the oldest entry `retention` keeps among `count` entries
    in id order (`count` when it keeps none); `time_at(i)` is entry i's time
    in epoch ms, None if unknown. Calls `time_at` O(log count) times."""
    low = max(0, count - retention.messages) if retention.messages else 0
    oldest = retention.oldest_kept_ms(now_ms)
    if oldest is None:
        return low
    high = count
    while low < high:
        middle = (low + high) // 2
        when = time_at(middle)
        if when is None or when < oldest:
            low = middle + 1
        else:
            high = middle
    return low


def _number(text: str, what: str, integer: bool) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ValueError(f"{what} must be {kind}, not {text!r}") from None
    if not value >= 0 or value != value or value == float("inf"):
        raise ValueError(f"{what} must be 0 or more, not {text!r}")
    return value


def parse_room_retention(spec: str) -> tuple[str, Retention]:
    """`ROOM:days=N,messages=M` (either or both; `ROOM:forever` keeps
    everything in that room whatever the server-wide limits). The default
    room is written `-`. Raises ValueError with a usage message."""
    room, sep, limits = spec.partition(":")
    room = room.strip()
    if not sep or not limits.strip():
        raise ValueError(f"{spec!r} is not ROOM:days=N,messages=M")
    if room == "-":
        room = DEFAULT
    else:
        try:
            room = check_name(room)
        except NotARoom as e:
            raise ValueError(f"{spec!r}: {e}") from None
    if limits.strip().lower() == "forever":
        return room, KEEP_ALL
    days, messages = 0.0, 0
    seen = set()
    for part in limits.split(","):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in ("days", "messages") or key in seen:
            raise ValueError(f"{spec!r}: {part.strip()!r} is not days=N or messages=M")
        seen.add(key)
        if key == "days":
            days = _number(value.strip(), "days", integer=False)
        else:
            messages = int(_number(value.strip(), "messages", integer=True))
    return room, Retention(days, messages)


class RetentionPolicy(NamedTuple):
    """The server-wide limits and each room's own, which replace them for
    that room (both kinds at once: a room that names only `days` keeps no
    count limit)."""

    default: Retention = KEEP_ALL
    rooms: dict[str, Retention] = {}

    @classmethod
    def from_options(
        cls, days: float, messages: int, room_specs: Iterable[str]
    ) -> "RetentionPolicy":
        """Raises ValueError with a message fit for a usage error."""
        rooms: dict[str, Retention] = {}
        for spec in room_specs:
            room, retention = parse_room_retention(spec)
            if room in rooms:
                raise ValueError(f"--room-retention names room {room or '-'!r} twice")
            rooms[room] = retention
        return cls(Retention(float(days), int(messages)), rooms)

    def for_room(self, name: str) -> Retention:
        return self.rooms.get(name, self.default)

    def describe(self) -> str:
        """One line for the start-up log."""
        rooms = "; ".join(
            f"room {name}: {retention.describe()}"
            for name, retention in sorted(self.rooms.items())
            if name
        )
        default = self.rooms.get("", self.default).describe()
        text = f"the default room: {default}; other rooms: {self.default.describe()}"
        return f"{text}; {rooms}" if rooms else text

    @property
    def keeps_all(self) -> bool:
        """Nothing ever expires: no purge needs to run."""
        return self.default.keeps_all and all(r.keeps_all for r in self.rooms.values())


class PurgeFailed(Exception):
    """A purge that could not finish (some rooms failed, the lease was
    lost), whose causes the purger has logged already: one line here, no
    traceback. `removed` is what it did remove ({room: count})."""

    def __init__(self, message: str, removed: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.removed = removed or {}


class IPurger(Interface):
    """A backend's removal of expired messages from storage."""

    def purge(
        policy: RetentionPolicy, now_ms: int
    ) -> "Deferred[dict[str, int] | None]":
        """Remove every expired message from every stored room, loaded in
        this process or not, from all of its storage (files and journal;
        Redis history and stream), without telling clients (they stopped
        seeing them at once). Fires with the number removed per room name
        (rooms with none may be left out). A cluster node that does not
        hold the purge lease removes nothing and fires with None, so it
        does not report a purge it did not make. Never blocks the
        reactor."""


class PurgeService(Service):
    """Runs the backend's purge every `interval` seconds, one at a time;
    a failed purge is logged and counted, and the next one tries again."""

    def __init__(
        self,
        purger: IPurger,
        policy: RetentionPolicy,
        reactor: Any,
        interval: float,
        metrics: Any = None,
    ) -> None:
        self.purger = purger
        self.policy = policy
        self._reactor = reactor
        self.interval = interval
        self._metrics = metrics
        self._call: Any = None
        self._running: Deferred | None = None
        self._waiters: list[Deferred] = []

    def startService(self) -> None:
        super().startService()
        if not self.policy.keeps_all:
            # The first purge soon after start, not a whole interval later:
            # a server restarted often would otherwise never purge.
            self._call = self._reactor.callLater(min(self.interval, 5.0), self._tick)

    def _tick(self) -> None:
        self._call = None
        self.run_now().addBoth(self._again)

    def _again(self, _: object) -> None:
        if self.running and self._call is None:
            self._call = self._reactor.callLater(self.interval, self._tick)

    def run_now(self) -> "Deferred[dict[str, int] | None]":
        """One purge now (or the one already running); tests and the admin
        API call this too."""
        # Each caller gets a Deferred of its own: a purge that finds nothing
        # due finishes before this returns, and no caller's callbacks may
        # change what another one gets.
        waiting: Deferred[dict[str, int] | None] = Deferred()
        self._waiters.append(waiting)
        if self._running is None:
            self._running = ensureDeferred(self._purge())
            self._running.addBoth(self._done)
        return waiting

    def _done(self, result: object) -> None:
        self._running = None
        waiters, self._waiters = self._waiters, []
        for waiting in waiters:
            waiting.callback(result)

    async def _purge(self) -> dict[str, int] | None:
        now_ms = int(self._reactor.seconds() * 1000)
        try:
            removed = await self.purger.purge(self.policy, now_ms)
        except PurgeFailed as e:
            log.error(
                "retention purge failed: {error}; trying again in {s} s",
                error=str(e),
                s=self.interval,
            )
            if self._metrics is not None:
                self._metrics.retention_failures.inc()
                # What a purge that failed in some rooms removed in others.
                self._metrics.retention_purged.inc(sum(e.removed.values()))
            return {}
        except Exception:
            log.failure(
                "retention purge failed; trying again in {s} s", s=self.interval
            )
            if self._metrics is not None:
                self._metrics.retention_failures.inc()
            return {}
        if removed is None:
            return None  # another node's turn: nothing to report here
        total = sum(removed.values())
        if self._metrics is not None:
            self._metrics.retention_purged.inc(total)
            self._metrics.retention_last_purge.set(self._reactor.seconds())
        if total:
            log.info(
                "retention: purged {total} expired messages from {rooms} rooms",
                total=total,
                rooms=sum(1 for n in removed.values() if n),
            )
        return removed

    def stopService(self) -> "Deferred[Any] | None":
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        running = self._running
        if running is None:
            return None
        # Shutdown waits for a purge in flight: it may be rewriting a file.
        settled: Deferred[Any] = Deferred()
        running.addBoth(lambda result: settled.callback(None) or result)
        return settled


# The policy of a server started without retention options.
NO_RETENTION = RetentionPolicy()
