"""The files behind the history: data.json, its journal, and their rewrites.

Everything here blocks. It runs either at start-up (before anything listens)
or on the store's threads, never on the reactor while it serves.

Layout, for a history file `data.json`:

- `data.json` — a JSON array of `{"id","name","content","timestamp"}`, one
  entry per line; what v2 reads and writes (v2 entries have no `id`).
- `data.json.journal` — JSON Lines, one entry per line, appended and
  fsync'd per batch of messages; everything newer than data.json.
- `data.json.journal.old` — a journal taken out of service while its entries
  are folded into data.json; removed once the fold is durable.

Crash safety follows from the order of operations: data.json only ever
changes by an atomic replace of a fully fsync'd temporary file, a journal
line is acknowledged only after its fsync, and replay skips ids data.json
already holds, so a crash between any two steps loses nothing.
"""

import contextlib
import gc
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatbox import codec, messages

__all__ = [
    "HistoryFileError",
    "Journal",
    "Loaded",
    "journal_paths",
    "load",
    "write_array",
]

_CHUNK = 4096


class HistoryFileError(Exception):
    """A history file cannot be read; the message names the file and where."""


@dataclass
class Loaded:
    """Everything on disk, in id order, ready for the in-memory history."""

    ids: list[int] = field(default_factory=list)
    entries: list[bytes] = field(default_factory=list)
    # True when journals held entries: data.json is not complete on its own.
    needs_fold: bool = False


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
    entry = messages.history_entry(
        message_id, record["name"], record["content"], record["timestamp"]
    )
    return message_id, codec.encode_compact(entry)


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


def _journal_lines(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """Complete lines with their 1-based numbers; a torn last line is dropped."""
    end = raw.rfind(b"\n")
    if end < 0:
        return
    yield from enumerate(raw[:end].split(b"\n"), start=1)


def _replay_journal(path: str, loaded: Loaded) -> None:
    raw = _read_file(path)
    if raw:
        loaded.needs_fold = True
    bad: str | None = None
    for number, line in _journal_lines(raw):
        where = f"{path}: line {number}"
        try:
            record = codec.decode(line)
        except codec.DecodeError as e:
            bad = bad or f"{where}: not valid JSON: {e}"
            continue
        if bad is not None:
            # A damaged line followed by good ones is not a torn write.
            raise HistoryFileError(bad)
        message_id = record.get("id") if isinstance(record, dict) else None
        if type(message_id) is int and loaded.ids and message_id <= loaded.ids[-1]:
            continue  # Already in data.json: folded before a crash.
        last_id = loaded.ids[-1] if loaded.ids else 0
        message_id, entry = _entry(record, last_id, where, ids_required=True)
        loaded.ids.append(message_id)
        loaded.entries.append(entry)
    # A damaged tail is the write that a crash interrupted; nothing in it was
    # acknowledged, because acknowledgement waits for the fsync.


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
        _replay_journal(old, loaded)
        _replay_journal(current, loaded)
    return loaded


def fsync_directory(path: str) -> None:
    """Make a rename or a new file in `path`'s folder survive a power cut."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_array(path: str, entries: Sequence[bytes], count: int) -> None:
    """Atomically replace `path` with the first `count` entries as a JSON array.

    The temporary file lives in the same folder so that os.replace is a
    rename; it is fsync'd before the rename and the folder after it.
    """
    temporary = path + ".tmp"
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            f.write(b"[")
            for start in range(0, count, _CHUNK):
                chunk = entries[start : min(start + _CHUNK, count)]
                f.write(b"\n" if start == 0 else b",\n")
                f.write(b",\n".join(chunk))
            f.write(b"\n]\n" if count else b"]\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_directory(path)


def remove_durably(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_directory(path)


class Journal:
    """The append-only journal file, used from one thread at a time.

    A failed append (disk full, I/O error) is cut back off the file, so the
    journal never holds half a batch that a later append would run into.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = self._open(path)
        self._size = os.fstat(self._fd).st_size
        self._dirty = False

    @staticmethod
    def _open(path: str) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            fsync_directory(path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @property
    def size(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        """Write and fsync `data`, or leave the file as it was and raise."""
        if self._dirty:
            os.ftruncate(self._fd, self._size)
            self._dirty = False
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError:
            self._dirty = True
            with contextlib.suppress(OSError):  # Else retried before the next append.
                os.ftruncate(self._fd, self._size)
                self._dirty = False
            raise
        self._size += len(data)

    def truncate(self) -> None:
        """Empty the journal once everything in it is in data.json."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self._size = 0
        self._dirty = False

    def retire(self, old_path: str) -> None:
        """Move the current journal to `old_path` and start an empty one."""
        os.rename(self.path, old_path)
        try:
            fd = self._open(self.path)
        except BaseException:
            os.rename(old_path, self.path)
            raise
        os.close(self._fd)
        self._fd = fd
        self._size = 0
        self._dirty = False

    def close(self) -> None:
        os.close(self._fd)
