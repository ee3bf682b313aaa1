# -*- test-case-name: tests.unit.test_admin_history,tests.test_export -*-
"""The operator's actions on history as a whole: export, import, backup
and erasing a person (issue 16, docs/DESIGN.md "Export, import, backup,
erasure").

Kept beside the Moderator rather than in it: these walk every room and
stream, while the Moderator's actions are one order or one room call. They
reach rooms the Moderator's way (`Moderator._in_room`: entered for the
while, left after), check rooms with its `_room`, and audit with its
`_audit`, so a room is never made by a typo and every action is counted.

Reads go page by page (`IRoom.entries(after, PAGE)`) into an `ISink`, the
HTTP response, which says when it wants more (`drained`): memory holds one
page whatever the history's size, and a client that stops reading stops
the reads. A room stays entered (loaded) for the while of its pages.
"""

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from chatbox import __version__
from chatbox.admin.moderator import Moderator, _deferred, _ranges, _reason, _stamp
from chatbox.chat.arns import is_valid_name, name_keys
from chatbox.chat.content import is_valid_content
from chatbox.chat.moderation import ModerationError
from chatbox.chat.room import Imported, IRoom, RoomError
from chatbox.chat.rooms import RoomRefused
from chatbox.wire import codec
from chatbox.wire.clock import LAST_MILLIS, time_of
from chatbox.wire.messages import MARKS

__all__ = ["PAGE", "HistoryActions", "ISink", "Stopped", "checked_import"]

PAGE = 500
MAX_TIMESTAMP = 64
# How far ahead of the server's clock an imported message may be dated
# (clocks a little off, time zones in old v2 files).
FUTURE_SLACK_MS = 86_400_000


class Stopped(Exception):
    """The reader went away: nothing more is read for it."""


class ISink(Protocol):
    def write(self, data: bytes) -> None:
        """Send these bytes on (one or more whole lines)."""

    def drained(self) -> Deferred:
        """Fires once the reader wants more; fails with Stopped if it left."""


class Filter:
    """Which stored entries an export keeps: a nickname (every spelling
    ARNS holds for the same person, as `delete_by` finds them) and a time
    range, epoch ms inclusive. An entry whose time cannot be read is in no
    range."""

    def __init__(self, name: str | None, since: int | None, until: int | None) -> None:
        self.keys = None if name is None else set(name_keys(name))
        self.since = since
        self.until = until
        self._same: dict[str, bool] = {}

    @property
    def everything(self) -> bool:
        return self.keys is None and self.since is None and self.until is None

    def keeps(self, entry: bytes) -> bool:
        stored = codec.decode(entry)
        if self.keys is not None:
            posted_by = stored.get("name")
            match = self._same.get(posted_by)
            if match is None:
                try:
                    match = not self.keys.isdisjoint(name_keys(posted_by))
                except Exception:  # a v2 name ARNS cannot read: not this one
                    match = False
                self._same[posted_by] = match
            if not match:
                return False
        if self.since is None and self.until is None:
            return True
        millis = time_of(stored.get("timestamp"), stored.get("time"))
        if millis is None:
            return False
        if self.since is not None and millis < self.since:
            return False
        return self.until is None or millis <= self.until


def export_line(room: str, entry: bytes) -> bytes:
    """The export's line for one stored entry: `room` first, then the
    entry's own fields as stored, spliced without decoding it again."""
    return b'{"room":' + codec.encode(room) + b"," + entry[1:] + b"\n"


def _id_of(entry: bytes) -> int:
    return codec.decode(entry)["id"]


def checked_import(fields: object, where: str) -> Imported:
    """One message of an import batch, held to what a live send must be:
    a nickname chatbox accepts, content of 1 to 4,000 characters, a v2
    timestamp text, an optional `time` (epoch ms) and mark. ModerationError
    (400) names `where` (message #N of the batch)."""

    def bad(why: str) -> ModerationError:
        return ModerationError(400, f"{where}: {why}")

    if not isinstance(fields, dict):
        raise bad("a message is a JSON object")
    unknown = sorted(set(fields) - {"name", "content", "timestamp", "time", "mark"})
    if unknown:
        raise bad(f"unknown field {unknown[0][:40]!r}")
    name = fields.get("name")
    if not isinstance(name, str) or not is_valid_name(name):
        raise bad("name is not a nickname chatbox accepts")
    content = fields.get("content")
    if not is_valid_content(content):
        raise bad("content must be text of 1 to 4,000 characters")
    timestamp = fields.get("timestamp")
    if (
        not isinstance(timestamp, str)
        or not 0 < len(timestamp) <= MAX_TIMESTAMP
        or not timestamp.isprintable()
    ):
        raise bad(f"timestamp must be v2 text of 1 to {MAX_TIMESTAMP} characters")
    millis = fields.get("time")
    if millis is not None and (
        type(millis) is not int or not 0 <= millis <= LAST_MILLIS
    ):
        raise bad("time must be epoch milliseconds")
    mark = fields.get("mark")
    if mark is not None and mark not in MARKS:
        raise bad("mark must be one of " + ", ".join(MARKS))
    return Imported(name, content, timestamp, time_of(timestamp, millis), mark)


class HistoryActions:
    """Export, import, backup and erasure, for one server's admin API."""

    def __init__(self, moderator: Moderator) -> None:
        self.moderator = moderator

    @property
    def rooms(self) -> Any:
        return self.moderator.rooms

    async def _walk(self, room: str | None) -> list[str]:
        """One room (checked: a name this server can have), or every room
        that may hold history (on a cluster, those made on other nodes
        too)."""
        if room is None:
            return await self.rooms.all_rooms()
        checked = self.moderator._room(room)
        assert checked is not None
        return [checked]

    async def _each_room(
        self,
        room: str | None,
        act: Callable[[str, IRoom], Any],
        names: list[str] | None = None,
    ) -> None:
        """`act(name, room)` on each room `_walk` names (or `names`),
        entered for the while. A room named by the operator that does not
        exist is 404; while walking every room, one listed but never made
        (or gone since) is passed over rather than made."""
        for name in await self._walk(room) if names is None else names:

            def entered(r: IRoom, name: str = name) -> Deferred:
                return Deferred.fromCoroutine(act(name, r))

            try:
                await self.moderator._in_room(name, entered)
            except ModerationError as e:
                if room is None and e.status == 404:
                    continue
                raise

    # -- export --

    def export(
        self,
        operator: str,
        sink: ISink,
        room: str | None,
        name: str | None,
        since: int | None,
        until: int | None,
    ) -> "Deferred[int]":
        """Stream every kept entry matching the filters into `sink`, room
        by room (the default room first), oldest first; fires with how many
        lines were written; audited as it starts."""
        self.moderator._audit(
            operator,
            "export",
            f"{'every room' if room is None else self.moderator._where(room)}"
            f", messages of {'anyone' if name is None else repr(name)} from "
            f"{_stamp(since)} to {_stamp(until)}",
        )
        return Deferred.fromCoroutine(self._export(sink, room, name, since, until))

    @_deferred
    async def check_room(self, room: str | None) -> None:
        """Refuse (404) an export of a room that does not exist before any
        line is sent, while a status can still say so."""
        if room is None:
            return
        checked = self.moderator._room(room)
        assert checked is not None
        if not await self.rooms.exists(checked):
            raise ModerationError(404, f"no room {checked!r}")

    async def _export(
        self,
        sink: ISink,
        room: str | None,
        name: str | None,
        since: int | None,
        until: int | None,
    ) -> int:
        if name is not None and not is_valid_name(name):
            raise ModerationError(400, "not a nickname")
        keep = Filter(name, since, until)
        written = 0

        async def one_room(room_name: str, entered: IRoom) -> None:
            nonlocal written
            after = 0
            while True:
                page = await entered.entries(after, PAGE)
                if not page:
                    return
                after = page[-1][0]
                lines = [
                    export_line(room_name, entry)
                    for _, entry in page
                    if keep.everything or keep.keeps(entry)
                ]
                if lines:
                    sink.write(b"".join(lines))
                    written += len(lines)
                await sink.drained()

        await self._each_room(room, one_room)
        return written

    # -- backup --

    @_deferred
    async def backup(self, operator: str, sink: ISink, now_ms: int) -> dict[str, Any]:
        """Stream every room's history for `chatbox-admin backup`. First
        the newest id of every room is noted, so each room is read up to
        the last id it had when the backup started, whatever is written
        meanwhile: one consistent prefix of each. Then for each room
        `{"backup":"room","room":R}`, its stored entries one per line, and
        `{"backup":"end","room":R,"count":N,"last":L}`; then the rules
        (`{"backup":"moderation","rules":{...}}`), and last
        `{"backup":"done",...}`: a stream without it is incomplete."""
        lasts: dict[str, int] = {}

        async def note_last(room_name: str, entered: IRoom) -> None:
            newest = await entered.page(1, None, None, 0)
            lasts[room_name] = _id_of(newest.entries[-1]) if newest.entries else 0

        await self._each_room(None, note_last)
        rules = self.moderator.moderation.snapshot()
        self.moderator._audit(operator, "backup", f"{len(lasts)} rooms and the rules")
        rooms: dict[str, dict[str, int]] = {}

        async def one_room(room_name: str, entered: IRoom) -> None:
            last = lasts[room_name]
            sink.write(codec.encode({"backup": "room", "room": room_name}) + b"\n")
            count, after = 0, 0
            while after < last:
                page = await entered.entries(after, PAGE)
                if not page:
                    break
                kept = [entry for message_id, entry in page if message_id <= last]
                if kept:
                    sink.write(b"\n".join(kept) + b"\n")
                    count += len(kept)
                after = page[-1][0]
                await sink.drained()
            end = {"backup": "end", "room": room_name, "count": count, "last": last}
            sink.write(codec.encode(end) + b"\n")
            rooms[room_name] = {"count": count, "last": last}
            await sink.drained()

        await self._each_room(None, one_room, list(lasts))
        sink.write(codec.encode({"backup": "moderation", "rules": rules}) + b"\n")
        done = {
            "backup": "done",
            "version": __version__,
            "started": now_ms,
            "rooms": len(rooms),
        }
        sink.write(codec.encode(done) + b"\n")
        return rooms

    # -- import --

    @_deferred
    async def import_messages(
        self, operator: str, room: str, messages: list[Imported]
    ) -> list[int]:
        """Append `messages` (already checked, `checked_import`) after the
        room's history with new ids. The room is made if this server may
        have it (importing into a new room is how a history moves), unlike
        other actions, which never make a room."""
        checked = self.moderator._room(room)
        assert checked is not None
        try:
            entered = await self.rooms.enter(checked)
        except RoomRefused as e:
            raise ModerationError(404 if e.status == 404 else 503, str(e)) from None
        try:
            await self._in_time_order(entered, messages)
            ids = await entered.import_entries(messages)
        except RoomError as e:
            raise ModerationError(503, f"could not keep them: {e}") from None
        finally:
            self.rooms.leave(checked)
        self.moderator._audit(
            operator,
            "import",
            f"{len(ids)} messages as {_ranges(ids) or 'none'} into "
            f"{self.moderator._where(checked)}",
        )
        return ids

    async def _in_time_order(self, room: IRoom, messages: list[Imported]) -> None:
        """Refuse (400) a batch that would put a message before a newer one
        (already in the room, or earlier in the import), date one in the
        future, or leave one without a time. Retention cuts a room's
        oldest end by a binary search over times: any of these would make
        it cut live messages with the old (or never expire one)."""
        newest = None
        page = await room.page(1, None, None, 0)
        if page.entries:
            stored = codec.decode(page.entries[-1])
            newest = time_of(stored["timestamp"], stored.get("time"))
        latest = self.moderator._now() + FUTURE_SLACK_MS
        for number, message in enumerate(messages, 1):
            when = message.millis
            if when is None:
                raise ModerationError(
                    400,
                    f"message #{number}: its timestamp is not one chatbox can "
                    "read, and it has no time (epoch ms): add one",
                )
            if when > latest:
                raise ModerationError(
                    400,
                    f"message #{number}: dated {_stamp(when)}, in the future",
                )
            if newest is not None and when < newest:
                raise ModerationError(
                    400,
                    f"message #{number}: dated {_stamp(when)}, before a message "
                    f"already in the room or the import ({_stamp(newest)}): "
                    "history must stay in time order for retention; import "
                    "old history into a room before it holds newer messages, "
                    "or into a room of its own",
                )
            newest = when if newest is None else max(newest, when)

    # -- erasing a person --

    @_deferred
    async def erase(
        self,
        operator: str,
        name: str,
        room: str | None,
        since: int | None,
        until: int | None,
        reason: str,
    ) -> dict[str, int]:
        """Delete every message of `name` (ARNS: every spelling of the same
        person) within [since, until] in `room` or every room, loaded or
        not, through the rooms' deletion (gone from every file or from
        Redis before this fires); one audit line for the whole erasure.
        Fires with the count per room that had any."""
        if not is_valid_name(name):
            raise ModerationError(400, "not a nickname")
        reason = _reason(reason)
        if since is not None and until is not None and since > until:
            raise ModerationError(400, "since is after until")
        when = self.moderator.factory.timestamps.now()
        counts: dict[str, int] = {}

        async def one_room(room_name: str, entered: IRoom) -> None:
            removed = await entered.delete_by(name, since, until, when)
            if removed:
                counts[room_name] = len(removed)

        try:
            await self._each_room(room, one_room)
        finally:
            # What was erased is audited even if a room failed midway.
            self.moderator._audit(
                operator,
                "erase",
                f"{sum(counts.values())} messages of {name!r} in "
                f"{self.moderator._where(room)} from {_stamp(since)} to "
                f"{_stamp(until)}: {_per_room(counts.items())}",
                reason,
            )
        return counts


def _per_room(counts: Iterable[tuple[str, int]]) -> str:
    said = [f"{'/' + name}={count}" for name, count in counts]
    return ", ".join(said) or "none found"
