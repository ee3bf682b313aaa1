"""The files behind the history: data.json, its journal, and their rewrites.

Everything here blocks. It runs either at start-up (before anything listens)
or on the store's threads, never on the reactor while it serves.

Layout, for a history file `data.json`:

- `data.json` — a JSON array of `{"id","name","content","timestamp","time"}`,
  one entry per line; what v2 reads and writes (v2 entries have no `id` or
  `time`; both are given when such a file is loaded).
- `data.json.journal` — one record per line, `<crc32 as 8 hex> <JSON>`,
  appended and fsync'd per batch; everything newer than data.json. The
  checksum is what tells a torn write from damage. A record is one of:
  - a message: the entry as data.json holds it (`{"id":..,"name":..}`);
  - a deletion: `{"deleted":[ids],"last":L}`, an operator's removal of
    those messages, `L` the highest id handed out when it was written. It
    holds no content, so it may outlive the messages it removes;
  - an expiry: `{"expired_to":E,"last":L}`, retention's removal of every
    message with an id up to E (the oldest ones: retention only ever cuts
    a prefix), so a purge of 100,000 messages is one short record; `L` as
    in a deletion;
  - a mark, only ever a journal's first record: `{"follows":A,"last":L}`,
    written when the journal was started after a history whose newest kept
    message is `A` while ids up to `L` (> A) had been handed out: the newest
    messages were deleted, and without the mark their ids would be handed
    out again once their records are gone.
- `data.json.journal.old` — a journal taken out of service while its entries
  are folded into data.json; removed once the fold is durable. Every fold
  (a big journal, a purge of deleted messages, start-up and shutdown) first
  retires the journal, starting the new one with a mark if one is due, then
  writes data.json as it was at that moment, then removes the old journal.
- `data.json.tmp`, `data.json.journal.tmp` — a file being written before it
  is renamed into place; one left by a crash is removed at start-up.
- `data.json.lock` — flock'd by the one process that owns the history, so
  a second server on the same files refuses before it reads anything.
- `data.json.torn-<UTC time>` — the bytes of a torn last write, kept as
  evidence before the journal is folded away.
- `data.json.sends` — the recent send_ids (chatbox.chat.sends), written at a
  clean stop and read at start, so a retry after a deploy is still known.

Crash safety follows from the order of operations: data.json only ever
changes by an atomic replace of a fully fsync'd temporary file, a journal
line is acknowledged only after its fsync, and replay skips ids data.json
already holds, so a crash between any two steps loses nothing. A deletion
is acknowledged once its record is fsync'd; the content itself is gone
from every file once the fold that follows it has removed the old journal.

Damage is never repaired here: anything that is not a torn last write stops
start-up with the file, the offset and the ids, and nothing is rewritten.
"""

import contextlib
import fcntl
import gc
import os
import time
import zlib
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatbox.chat.sends import Kept, valid_send_id
from chatbox.wire import codec, messages
from chatbox.wire.clock import time_of

__all__ = [
    "MAX_BATCH_BYTES",
    "HistoryFileError",
    "HistoryLock",
    "Journal",
    "Loaded",
    "TornTail",
    "deletion_record",
    "expiry_record",
    "fold",
    "history_path",
    "journal_paths",
    "keep_torn",
    "load",
    "mark_record",
    "record",
    "remove_leftovers",
    "torn_files",
    "write_array",
]

_CHUNK = 4096

# The most bytes one journal write holds (a single bigger record goes alone).
# A crash can only tear the last write, so an incomplete tail longer than
# this is damage, unless it is the start of one big record. Small, so that
# zeroed or lost journal ends are told from torn writes down to that size;
# group commit rarely needs more (200 senders' messages are about 30 KiB).
MAX_BATCH_BYTES = 64 * 1024

RECOVERY = "see 'Recovering a damaged history' in the README"


class HistoryFileError(Exception):
    """A history file cannot be read; the message names the file and where."""


@contextlib.contextmanager
def _about(path: str) -> Iterator[None]:
    """os.write and os.fsync raise OSErrors without a file name, which left
    operators reading `None: No space left on device`: every OSError out of
    this module passes through here and names its file."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, path) from e


def record(entry: bytes) -> bytes:
    """One journal line: the checksum guards exactly the entry's bytes."""
    return b"%08x %s\n" % (zlib.crc32(entry), entry)


def deletion_record(ids: Sequence[int], last: int) -> bytes:
    """The journal line of an operator's deletion of `ids` (ids only: no
    content), written when ids up to `last` had been handed out."""
    return record(codec.encode_compact({"deleted": list(ids), "last": last}))


def expiry_record(upto: int, last: int) -> bytes:
    """The journal line of retention's removal of every message with an id
    up to `upto`, written when ids up to `last` had been handed out."""
    return record(codec.encode_compact({"expired_to": upto, "last": last}))


def mark_record(kept: int, last: int) -> bytes:
    """The first line of a journal started after a history whose newest
    kept message is `kept`, when ids up to `last` had been handed out."""
    return record(codec.encode_compact({"follows": kept, "last": last}))


@dataclass
class TornTail:
    """The incomplete last record of a journal: the write a crash
    interrupted (so never acknowledged), or damage that looks like one (a
    zeroed end shorter than one write); kept, never just erased."""

    path: str
    offset: int
    data: bytes


@dataclass
class Loaded:
    """Everything on disk, in id order, ready for the in-memory history."""

    ids: list[int] = field(default_factory=list)
    entries: list[bytes] = field(default_factory=list)
    # True when journals held records: data.json is not complete on its own.
    needs_fold: bool = False
    torn: list[TornTail] = field(default_factory=list)
    # The highest id ever handed out: above ids[-1] when the newest were
    # deleted. New messages are given ids after it.
    high: int = 0
    # When an old journal was replayed: the history as it stood when that
    # journal was retired (ids, entries), which the fold interrupted was
    # writing into data.json; start-up finishes that fold first.
    retired: tuple[list[int], list[bytes]] | None = None


def journal_paths(path: str) -> tuple[str, str]:
    """The current and the retiring journal of history file `path`."""
    return path + ".journal", path + ".journal.old"


def _entry(
    record: Any, last_id: int, where: str, ids_required: bool
) -> tuple[int, bytes]:
    """Validate one stored message; returns its id and canonical encoding."""
    if not isinstance(record, dict):
        raise HistoryFileError(
            f"{where}: expected an object, found {type(record).__name__}"
        )
    for key in ("name", "content", "timestamp"):
        if not isinstance(record.get(key), str):
            raise HistoryFileError(f"{where}: {key!r} is missing or not a string")
    message_id = record.get("id")
    if message_id is None and not ids_required:
        message_id = last_id + 1
    if type(message_id) is not int or message_id <= last_id:
        raise HistoryFileError(
            f"{where}: 'id' must be an integer above {last_id}, found {message_id!r}"
        )
    # Written before `time` existed, or by hand: derived from the v2
    # timestamp, in this server's zone, which is what it was written in.
    millis = time_of(record["timestamp"], record.get("time"))
    entry = messages.history_entry(
        message_id,
        record["name"],
        record["content"],
        record["timestamp"],
        millis,
        _mark_of(record),
    )
    return message_id, codec.encode_compact(entry)


def _mark_of(record: dict[str, Any]) -> str | None:
    """The ext mark (chatbox.wire.messages.MARKS) a stored record carries."""
    for mark in messages.MARKS:
        if record.get(mark) is True:
            return mark
    return None


def _read_file(path: str) -> bytes:
    """The file's bytes; a missing file reads as empty."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""
    except OSError as e:
        raise HistoryFileError(f"{path}: cannot read: {e.strerror}") from e


def _read_array(path: str, loaded: Loaded) -> None:
    raw = _read_file(path)
    if not raw.strip():
        return  # An empty file is an empty history, as in v2.
    try:
        records = codec.decode(raw)
    except codec.DecodeError as e:
        raise HistoryFileError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(records, list):
        raise HistoryFileError(
            f"{path}: expected a JSON array of messages, found {type(records).__name__}"
        )
    last_id = 0
    for index, record in enumerate(records):
        where = f"{path}: message #{index + 1}"
        last_id, entry = _entry(record, last_id, where, ids_required=False)
        loaded.ids.append(last_id)
        loaded.entries.append(entry)


def _damaged(where: str, what: str) -> HistoryFileError:
    return HistoryFileError(f"{where}: {what}; nothing was changed: {RECOVERY}")


def _body(line: bytes) -> tuple[bytes, bool] | None:
    """The entry JSON of one complete journal line and whether it is of the
    checksum-less format (left by chatbox before checksums, after a crash);
    None if its checksum fails."""
    if line[:1] == b"{":
        return line, True
    body = line[9:]
    if line[8:9] == b" " and line[:8] == b"%08x" % zlib.crc32(body):
        return body, False
    return None


def _one_record(tail: bytes) -> bool:
    """The start of a single record, as written: a header, and no NUL (JSON
    escapes it), so not a run of zeroed or unwritten blocks."""
    header = tail[:1] == b"{" or (
        tail[8:10] == b" {" and all(c in b"0123456789abcdef" for c in tail[:8])
    )
    return header and b"\0" not in tail


def _whole(data: bytes) -> bool:
    """`data` is one complete record: its checksum holds (or, in the old
    format, it is JSON)."""
    parsed = _body(data)
    if parsed is None:
        return False
    body, legacy = parsed
    if not legacy:
        return True
    try:
        codec.decode(body)
    except codec.DecodeError:
        return False
    return True


class _Replay:
    """Both journals, in order, onto what data.json holds.

    Ids must follow on: skipping what data.json already has (folded before
    a crash), the first journal id left is data.json's last id + 1 and each
    next one + 1, so an emptied or older data.json under a newer journal
    stops start-up instead of silently losing messages in between. Records
    of the checksum-less format were written by a store that could leave
    gaps (a failed batch kept its ids), so they need only go up.

    Deletions leave gaps in data.json but never in the records: a deletion
    record and a mark say how far ids had gone (`last`), so every message
    record must still be exactly one past the record before it. A mark
    also says which message the history before it ended with, which is
    what still tells an emptied data.json once its newest were deleted.

    One state is ambiguous until the current journal is read: a crash
    after a fold wrote data.json but before it removed the old journal
    leaves a data.json newer than the old journal's first record. Then
    data.json must be exactly the history the current journal follows
    (its mark's message, or the id before its first record), and every
    message taken from the old journal must have been deleted in it; if
    not, the old journal's first mismatch is reported as the damage.
    """

    def __init__(self, array_path: str, loaded: Loaded) -> None:
        self.array_path = array_path
        self.loaded = loaded
        self.array_last = loaded.ids[-1] if loaded.ids else 0
        self.high = self.array_last  # the highest id known handed out
        self.previous: int | None = None  # the last journal record's id or `last`
        self.taken = False  # a message was taken from a journal
        self.deleted: set[int] = set()
        # Every message up to this id expired (an expiry record), besides
        # the deleted ones: a prefix, kept as one number.
        self.expired_to = 0
        self.current = False  # reading the current journal (not the old one)
        self.first = True  # the next record is its journal's first
        self.marked = False  # the last journal read began with a mark
        # Damage to report unless the current journal shows data.json is the
        # fold that followed the old journal (see the class docstring).
        self.unless_folded: str | None = None

    def journal(self, path: str, current: bool) -> None:
        self.current = current
        self.first = True
        self.marked = False
        raw = _read_file(path)
        end = raw.rfind(b"\n") + 1  # the complete lines end here
        lines = 0
        if end:
            offset = 0
            for lines, line in enumerate(raw[: end - 1].split(b"\n"), 1):
                self._line(path, lines, offset, line)
                offset += len(line) + 1
        if end < len(raw):
            self._tail(path, lines + 1, end, raw[end:])
        if raw and not (current and lines == 1 and self.marked and end == len(raw)):
            # More than the current journal's mark: not all in data.json.
            self.loaded.needs_fold = True
        if not current and raw:
            self.loaded.retired = self._kept()

    def finish(self) -> None:
        """After both journals: settle a pending doubt, drop what was deleted."""
        if self.unless_folded is not None:
            self._folded_or_damaged(self.high)
        loaded = self.loaded
        loaded.high = max(self.high, loaded.ids[-1] if loaded.ids else 0)
        if self.deleted or self.expired_to:
            loaded.ids, loaded.entries = self._kept()

    def _kept(self) -> tuple[list[int], list[bytes]]:
        ids, entries, deleted = self.loaded.ids, self.loaded.entries, self.deleted
        start = bisect_right(ids, self.expired_to)
        if not deleted:
            return ids[start:], entries[start:]
        pairs = [
            (i, e)
            for i, e in zip(ids[start:], entries[start:], strict=True)
            if i not in deleted
        ]
        return [i for i, _ in pairs], [e for _, e in pairs]

    def _survivor(self) -> int:
        """The newest message replayed so far that was not deleted."""
        ids = self.loaded.ids
        for index in range(len(ids) - 1, -1, -1):
            if ids[index] <= self.expired_to:
                break
            if ids[index] not in self.deleted:
                return ids[index]
        return 0

    def _folded_or_damaged(self, follows: int) -> None:
        """The old journal did not follow data.json: only right if
        data.json is the fold that ended at `follows` and every message
        taken from the old journal was deleted."""
        damage, self.unless_folded = self.unless_folded, None
        if self.array_last != follows or self._survivor() != self.array_last:
            assert damage is not None
            raise HistoryFileError(damage)

    def _doubt(self, damage: HistoryFileError) -> None:
        """A mismatch at the old journal's first record: damage, or a
        data.json already folded past it (decided by the current journal)."""
        if self.current or self.taken or self.previous is not None:
            raise damage
        self.unless_folded = str(damage)

    def _tail(self, path: str, number: int, offset: int, tail: bytes) -> None:
        """An incomplete last record is the write a crash interrupted, never
        acknowledged since acknowledgement waits for the fsync, as long as it
        fits in one write, or is the start of one record written alone (its
        bytes hold no newline, so no more than that record is lost)."""
        if _whole(tail):
            # The whole record is there, only its newline is not: written in
            # full, so kept (it may even have been acknowledged).
            self._line(path, number, offset, tail)
            return
        if len(tail) > 1 and tail[-1:] != b"\0" and _whole(tail[:-1]):
            raise _damaged(
                f"{path}: line {number} (byte offset {offset})",
                "a complete record ends in a byte that is not a newline; a "
                "torn write leaves bytes missing, never changed",
            )
        if len(tail) > MAX_BATCH_BYTES and not _one_record(tail):
            raise _damaged(
                f"{path}: line {number} (byte offset {offset})",
                f"the last {len(tail)} bytes hold no complete record, more than "
                f"one write ({MAX_BATCH_BYTES} bytes) can leave torn",
            )
        self.loaded.torn.append(TornTail(path, offset, tail))

    def _line(self, path: str, number: int, offset: int, line: bytes) -> None:
        where = f"{path}: line {number} (byte offset {offset})"
        parsed = _body(line)
        if parsed is None:
            raise _damaged(where, "the record fails its checksum")
        body, legacy = parsed
        try:
            record = codec.decode(body)
        except codec.DecodeError as e:
            raise _damaged(where, f"not valid JSON: {e}") from None
        first, self.first = self.first, False
        if not legacy and isinstance(record, dict) and "name" not in record:
            if "deleted" in record:
                self._deletion(where, record, first)
                return
            if "expired_to" in record:
                self._expiry(where, record, first)
                return
            if "follows" in record:
                self._mark(where, record, first)
                return
        if first and self.current and self.unless_folded is not None:
            self._folded_or_damaged(self.high)
        message_id = record.get("id") if isinstance(record, dict) else None
        loaded = self.loaded
        last_id = loaded.ids[-1] if loaded.ids else 0
        if type(message_id) is int and not legacy:
            if not self.taken and message_id <= self.array_last:
                expected = message_id if self.previous is None else self.previous + 1
            else:
                base = self.high if self.previous is None else self.previous
                expected = base + 1
            if message_id != expected:
                damage = _damaged(where, self._gap(message_id, expected))
                if self.previous is not None or message_id <= self.array_last:
                    raise damage
                self._doubt(damage)
        if (
            type(message_id) is int
            and message_id <= self.array_last
            and not self.taken  # nothing taken from journals yet
        ):
            self.previous = message_id
            return  # Already in data.json: folded before a crash.
        message_id, entry = _entry(record, last_id, where, ids_required=True)
        self.previous = message_id
        self.high = max(self.high, message_id)
        self.taken = True
        loaded.ids.append(message_id)
        loaded.entries.append(entry)

    def _last(self, where: str, record: dict[str, Any]) -> int:
        last = record.get("last")
        if type(last) is not int or last < 0:
            raise _damaged(where, f"'last' must be an id, found {last!r}")
        return last

    def _deletion(self, where: str, record: dict[str, Any], first: bool) -> None:
        last = self._last(where, record)
        ids = record.get("deleted")
        if not isinstance(ids, list) or not all(
            type(i) is int and 0 < i <= last for i in ids
        ):
            raise _damaged(where, f"'deleted' must be ids up to {last}")
        self._removal(where, last, first, "a deletion")
        self.deleted.update(ids)

    def _expiry(self, where: str, record: dict[str, Any], first: bool) -> None:
        last = self._last(where, record)
        upto = record.get("expired_to")
        if type(upto) is not int or not 0 < upto <= last:
            raise _damaged(where, f"'expired_to' must be an id up to {last}")
        self._removal(where, last, first, "an expiry")
        self.expired_to = max(self.expired_to, upto)

    def _removal(self, where: str, last: int, first: bool, what: str) -> None:
        """What a deletion and an expiry must both follow: the record
        before them, by its id or its `last`."""
        if first and self.current and self.unless_folded is not None:
            self._folded_or_damaged(self.high)
        base = self.high if self.previous is None else self.previous
        if last != base:
            if self.previous is not None or self.taken:
                raise _damaged(
                    where,
                    f"{what} made when ids had reached {last} follows a "
                    f"record of id {base}",
                )
            if last > self.array_last:  # else: data.json was folded past it
                self._doubt(
                    _damaged(
                        where,
                        f"{what} made when ids had reached {last}, but "
                        f"{self.array_path} ends at id {self.array_last} "
                        f"({self.array_path} may have been emptied or replaced "
                        "by an older copy)",
                    )
                )
        self.previous = last
        self.high = max(self.high, last)

    def _mark(self, where: str, record: dict[str, Any], first: bool) -> None:
        last = self._last(where, record)
        follows = record.get("follows")
        if type(follows) is not int or not 0 <= follows < last:
            raise _damaged(where, f"'follows' must be an id below {last}")
        if not first:
            raise _damaged(where, "a mark that is not its journal's first record")
        if self.current and self.unless_folded is not None:
            self._folded_or_damaged(follows)
        survivor = self._survivor()
        if survivor != follows or last < self.high:
            self._doubt(
                _damaged(
                    where,
                    f"starts after a history whose newest message is id "
                    f"{follows}, but the history before it ends at id {survivor} "
                    f"({self.array_path} may have been emptied or replaced by "
                    "an older copy)",
                )
            )
        self.previous = last
        self.high = max(self.high, last)
        self.marked = True

    def _gap(self, found: int, expected: int) -> str:
        if self.previous is None:
            return (
                f"holds message id {found}, but {self.array_path} ends at id "
                f"{self.high}, so the ids in between are missing "
                f"({self.array_path} may have been emptied or replaced by an "
                "older copy)"
            )
        return f"holds message id {found} where id {expected} must follow"


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Loading makes no reference cycles, but a parsed history is millions of
    live objects that every collection would walk again: 60% of load time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load(path: str) -> Loaded:
    """Read data.json and replay both journals; raises HistoryFileError."""
    loaded = Loaded()
    current, old = journal_paths(path)
    with _cyclic_gc_paused():
        _read_array(path, loaded)
        replay = _Replay(path, loaded)
        replay.journal(old, current=False)
        replay.journal(current, current=True)
        replay.finish()
    return loaded


def remove_leftovers(path: str) -> None:
    """Remove the temporary files a crash left beside history `path`: never
    needed (only a complete one is ever renamed into place), and they may
    hold messages deleted since. Start-up only, with the lock held."""
    for leftover in (path + ".tmp", journal_paths(path)[0] + ".tmp"):
        remove_durably(leftover)


def fsync_directory(path: str, *, fsync: Callable[[int], None] = os.fsync) -> None:
    """Make a rename or a new file in `path`'s folder survive a power cut.

    `fsync`, here and in write_array, remove_durably and fold, is a seam for
    tests: a recording one shows the order of the fsyncs and the renames,
    which nothing else can see without a power cut. A parameter like
    Journal's rather than a module global, so a test replaces it for the
    one call it watches and never for a store's writer thread.
    """
    folder = os.path.dirname(os.path.abspath(path))
    with _about(folder):
        fd = os.open(folder, os.O_RDONLY)
        try:
            fsync(fd)
        finally:
            os.close(fd)


def history_path(path: str) -> str:
    """The file a history really is. A --data that is a symbolic link is
    followed: the lock and journals then sit beside the real file, so a
    second server given the link and one given the file exclude each other,
    and the atomic replace updates the file the link points to instead of
    turning the link into a file of its own."""
    return os.path.realpath(path) if os.path.islink(path) else path


def write_array(
    path: str,
    entries: Sequence[bytes],
    count: int,
    *,
    fsync: Callable[[int], None] = os.fsync,
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Atomically replace `path` with the first `count` entries as a JSON array.

    The temporary file lives in the same folder so that os.replace is a
    rename; it is fsync'd before the rename and the folder after it.
    `before_replace` runs once the temporary file is durable, just before
    the rename; if it raises, nothing is replaced.
    """
    temporary = path + ".tmp"
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    with _about(temporary):
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode
        )
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20) as f:
                f.write(b"[")
                for start in range(0, count, _CHUNK):
                    chunk = entries[start : min(start + _CHUNK, count)]
                    f.write(b"\n" if start == 0 else b",\n")
                    f.write(b",\n".join(chunk))
                f.write(b"\n]\n" if count else b"]\n")
                f.flush()
                fsync(f.fileno())
            if before_replace is not None:
                before_replace()
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    fsync_directory(path, fsync=fsync)


def sends_path(path: str) -> str:
    return path + ".sends"


def write_sends(
    path: str, kept: Sequence[Kept], *, fsync: Callable[[int], None] = os.fsync
) -> None:
    """Replace history file `path`'s send_id file with `kept`, atomically."""
    rows = [codec.encode_compact(list(row)) for row in kept]
    write_array(sends_path(path), rows, len(rows), fsync=fsync)


def read_sends(path: str) -> list[Kept]:
    """What write_sends wrote for history file `path` ([] if nothing);
    raises HistoryFileError if it cannot be read. Rows of the wrong shape
    are skipped: the worst they can cause is a message stored twice."""
    where = sends_path(path)
    raw = _read_file(where)
    if not raw.strip():
        return []
    try:
        rows = codec.decode(raw)
    except codec.DecodeError as e:
        raise HistoryFileError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(rows, list):
        raise HistoryFileError(f"{where}: expected a JSON array")
    return [
        (row[0], row[1], row[2], float(row[3]))
        for row in rows
        if isinstance(row, list)
        and len(row) == 4
        and isinstance(row[0], str)
        and valid_send_id(row[1])
        and type(row[2]) is int
        and type(row[3]) in (int, float)
    ]


def remove_durably(path: str, *, fsync: Callable[[int], None] = os.fsync) -> None:
    try:
        with _about(path):
            os.unlink(path)
    except FileNotFoundError:
        return
    fsync_directory(path, fsync=fsync)


def fold(
    path: str,
    entries: Sequence[bytes],
    count: int,
    *,
    fsync: Callable[[int], None] = os.fsync,
    retire: Callable[[], None] | None = None,
) -> None:
    """Make data.json hold the first `count` entries (the history as it was
    when the journal was retired), then drop the retired journal. Each step
    is durable before the next, so a crash anywhere leaves every message in
    data.json or in a journal, and every deletion in a journal or done.

    `retire`, at start-up and shutdown, retires the journal once the new
    data.json is written but not yet in place: a full disk then fails the
    fold before any file has changed."""
    write_array(path, entries, count, fsync=fsync, before_replace=retire)
    remove_durably(journal_paths(path)[1], fsync=fsync)


def torn_files(history_path: str) -> list[tuple[str, int]]:
    """The torn writes kept beside a history (keep_torn), each with when it
    was kept (epoch ms, its mtime): what retention's purge must remove too
    once every message stored before it has expired."""
    folder, base = os.path.split(history_path)
    prefix = base + ".torn-"
    found = []
    with _about(folder or "."), os.scandir(folder or ".") as listing:
        for entry in listing:
            if entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False):
                found.append((entry.path, entry.stat().st_mtime_ns // 1_000_000))
    return sorted(found)


def keep_torn(history_path: str, tail: TornTail) -> str:
    """Keep a torn write's bytes beside the history, durably, before the
    fold that drops it: evidence is never erased. Returns the new file."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = f"{history_path}.torn-{stamp}"
    kept, n = base, 1
    while True:
        try:
            with _about(kept):
                fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            n += 1
            kept = f"{base}.{n}"
    with _about(kept):
        try:
            view = memoryview(tail.data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_directory(kept)
    return kept


class HistoryLock:
    """An exclusive flock on `PATH.lock`, held while a process owns the history.

    The lock file is never truncated or removed by anyone who does not hold
    the lock, so a second server refusing leaves every file as it was. The
    kernel drops the lock when its holder dies, so a kill -9 needs no cleanup.
    """

    def __init__(
        self, history_path: str, advice: str = "stop it first or use another --data"
    ) -> None:
        self.path = history_path + ".lock"
        with _about(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).strip().decode("ascii", "replace")
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise HistoryFileError(
                f"{history_path} is in use by another chatbox{who}; {advice}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def claim(self) -> None:
        """Write our pid so a refused second server can name us. Done once
        the history has loaded (so a refused start-up changes no file) and
        after twistd forked; only a hint, so failing to write is fine."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, b"%d\n" % os.getpid(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # Closing the only descriptor releases the flock.


def replace_durably(path: str, data: bytes, mode: int = 0o644) -> None:
    """Make `path` hold `data`, all or nothing, surviving a power cut: a
    temporary file fsync'd, renamed over it, and the folder fsync'd."""
    temporary = f"{path}.tmp"
    with _about(temporary):
        _write_new(temporary, data, mode)
        os.replace(temporary, path)
    fsync_directory(path)


def _write_new(path: str, data: bytes, mode: int = 0o644) -> None:
    """Create `path` holding `data`, fsync'd (its folder is not)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The append-only journal file, used from one thread at a time.

    A failed append (disk full, I/O error) is cut back off the file, so the
    journal never holds half a batch that a later append would run into.
    Every OSError names the journal: os.write and os.fsync do not.
    """

    def __init__(self, path: str, fsync: Callable[[int], None] = os.fsync) -> None:
        """`fsync` is a seam for tests that must hold a write at its fsync,
        to see that nothing is acknowledged before it returns."""
        self.path = path
        self._fsync = fsync
        self._fd = self._open(path)
        self._size = os.fstat(self._fd).st_size
        self._dirty = False

    @staticmethod
    def _open(path: str) -> int:
        with _about(path):
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
            )
        try:
            fsync_directory(path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @property
    def size(self) -> int:
        return self._size

    def _cut_back(self) -> None:
        """Drop what a failed append left, before anything follows it."""
        if self._dirty:
            os.ftruncate(self._fd, self._size)
            self._dirty = False

    def append(self, data: bytes) -> None:
        """Write and fsync `data`, or leave the file as it was and raise."""
        with _about(self.path):
            self._cut_back()
            try:
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                self._fsync(self._fd)
            except OSError:
                self._dirty = True
                with contextlib.suppress(OSError):  # Else cut before the next.
                    self._cut_back()
                raise
        self._size += len(data)

    def append_all(self, writes: Sequence[bytes]) -> None:
        """Write and fsync each of `writes` in turn (each no bigger than a
        batch, so a crash tears only the last), or leave the file as it was
        before the first and raise: one operator's import is stored whole
        or refused whole."""
        start = self._size
        try:
            for data in writes:
                self.append(data)
        except OSError:
            if self._size != start:
                self._size = start
                self._dirty = True
                with contextlib.suppress(OSError):  # Else cut before the next.
                    self._cut_back()
            raise

    def truncate(self) -> None:
        """Empty the journal once everything in it is in data.json."""
        with _about(self.path):
            os.ftruncate(self._fd, 0)
            self._fsync(self._fd)
        self._size = 0
        self._dirty = False

    def retire(self, old_path: str, first: bytes = b"") -> None:
        """Move the current journal to `old_path` and start a new one that
        holds `first` (a mark, or nothing).

        A failed append's leftovers are cut off first: the retired journal
        is replayed as it is, and those records were refused. The new
        journal is written and fsync'd under a temporary name before the
        renames, so no crash leaves a journal without its mark.
        """
        temporary = self.path + ".tmp"
        with _about(self.path):
            self._cut_back()
            if first:
                _write_new(temporary, first)
            os.rename(self.path, old_path)
        try:
            if first:
                with _about(temporary):
                    os.rename(temporary, self.path)
            fd = self._open(self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rename(old_path, self.path)
            raise
        os.close(self._fd)
        self._fd = fd
        self._size = len(first)
        self._dirty = False

    def close(self) -> None:
        os.close(self._fd)
