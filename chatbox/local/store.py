"""The durable history: the Deferred-based JSON writer with group commit.

`append` returns a Deferred that fires with the message's id once the
message is written and fsync'd to the journal; only then does it enter the
in-memory history (and so `get`), and only then may the caller acknowledge
and broadcast it. One batch is on the disk at a time; everything that
arrives meanwhile waits in the queue and goes down as the next batch, so
concurrent senders share one write and one fsync (group commit), up to
datafile.MAX_BATCH_BYTES per write, so that a crash can only tear that much.

Ids are handed out when a batch is taken for writing, not when a message
arrives, and a batch that fails gives its ids back: the journal's ids have
no gaps, which is what lets start-up tell a lost data.json from a crash.

The journal is folded into data.json (see chatbox.local.datafile for the files)
on a second thread once it outgrows data.json itself, so the cost per
message stays constant as history grows and writing is never paused for
the fold. On clean shutdown everything is folded, leaving data.json
complete and v2-readable.

An operator's deletion takes the messages out of the in-memory history at
once, then goes through the same queue as messages: its journal record (ids
only) is fsync'd like a batch, and only then is anyone told. A failed write
puts the messages back and fails the deletion. A durable deletion then
waits for a purge: the journal is retired (between two batches, and never
while a deletion is still unwritten, so the retired history is exactly
what the files say) and the history of that moment folded into data.json;
once the retired journal is removed no file holds the deleted content, and
the deletion's Deferred fires. Deletions that arrive meanwhile share the
next purge. A purge that fails is retried every FOLD_RETRY_SECONDS; the
deletion stays durable and waits.

Retention's purge (`expire`) is such a deletion of the oldest messages,
written as one short record (every id up to one) and telling nobody.
An operator's import (`import_messages`) goes through the queue as
messages do, written alone so that its ids follow on.
"""

import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from chatbox.chat.arns import name_keys
from chatbox.chat.room import Imported, RoomError
from chatbox.local import datafile
from chatbox.local.history import History
from chatbox.metrics import Metrics
from chatbox.wire import codec, messages
from chatbox.wire.clock import Moment, time_of

__all__ = ["DurableStore", "StoreError"]

DEFAULT_FOLD_THRESHOLD = 16 * 1024 * 1024
FOLD_RETRY_SECONDS = 10.0


class StoreError(RoomError):
    """A message could not be made durable; str() is safe to show a client."""


def _short(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, OSError) and error.errno is not None:
        return os.strerror(error.errno)
    return "storage failure"


class _Deletion:
    """An operator's deletion on its way to the disk: the ids it took out
    of the history (and the entries, to put back if it cannot be written),
    who to tell once it is durable, and who waits for the purge."""

    def __init__(
        self,
        removed: list[tuple[int, bytes]],
        durable: Callable[[list[int]], None],
        upto: int | None = None,
    ) -> None:
        self.removed = removed
        self.ids = [message_id for message_id, _ in removed]
        self.durable = durable
        # Retention's expiry of every message up to this id: written as one
        # short record (datafile.expiry_record) instead of all its ids.
        self.upto = upto
        self.done: Deferred[list[int]] = Deferred()

    def record(self, last: int) -> bytes:
        if self.upto is not None:
            return datafile.expiry_record(self.upto, last)
        return datafile.deletion_record(self.ids, last)


class _Import:
    """Messages brought in by an operator (`chatbox-admin import`), on
    their way to the disk: given ids together when their write is taken,
    written alone (no message between them, so their ids follow on), and
    acknowledged together once all of them are fsync'd."""

    def __init__(self, messages: list[Imported]) -> None:
        self.messages = messages
        self.done: Deferred[list[int]] = Deferred()


# A queued message: name, content, when, its mark (or None), its Deferred.
_Message = tuple[str, str, Moment, str | None, "Deferred[int]"]
# A batch's message: its id, its entry, its Deferred (None: an import's).
_Item = tuple[int, bytes, "Deferred[int] | None"]


def _check_imported(item: object) -> None:
    """The caller validated every line; this only keeps a wrong shape from
    reaching the files, where start-up would refuse it."""
    if not (
        isinstance(item, Imported)
        and isinstance(item.name, str)
        and isinstance(item.content, str)
        and isinstance(item.timestamp, str)
        and (item.millis is None or type(item.millis) is int)
        and (item.mark is None or item.mark in messages.MARKS)
    ):
        raise StoreError(f"not a message to import: {item!r:.200}")


def _matching(
    entries: list[bytes], count: int, name: str, since: int | None, until: int | None
) -> list[int]:
    """The ids among the first `count` entries posted by a nickname that is
    `name` for ARNS, within [since, until]. Runs on a pool thread."""
    wanted = set(name_keys(name))
    same: dict[str, bool] = {}
    found = []
    for entry in islice(entries, count):
        stored = codec.decode(entry)
        posted_by = stored["name"]
        match = same.get(posted_by)
        if match is None:
            try:
                match = not wanted.isdisjoint(name_keys(posted_by))
            except Exception:  # a v2 name ARNS cannot read: not this one
                match = False
            same[posted_by] = match
        if not match:
            continue
        millis = time_of(stored["timestamp"], stored.get("time"))
        if millis is None and (since is not None or until is not None):
            continue  # When it was posted is unknown: not within any range.
        if since is not None and millis < since:
            continue
        if until is not None and millis > until:
            continue
        found.append(stored["id"])
    return found


class DurableStore:
    log = Logger()

    def __init__(
        self,
        path: str,
        reactor: IReactorThreads,
        fold_threshold: int = DEFAULT_FOLD_THRESHOLD,
        metrics: Metrics | None = None,
        open_journal: Callable[[str], datafile.Journal] = datafile.Journal,
    ) -> None:
        """`open_journal` is a seam for tests that watch or hold the
        journal's writes (a datafile.Journal with its own fsync, say)."""
        self.path = path = datafile.history_path(path)
        self._open_journal = open_journal
        self.history = History()
        self._reactor = reactor
        self._fold_threshold = fold_threshold
        self._journal_path, self._old_path = datafile.journal_paths(path)
        self._journal: datafile.Journal | None = None
        # Three threads: the writer, a fold, and a delete_by scan, so that
        # neither of the last two holds up acknowledging messages.
        self._pool = ThreadPool(minthreads=0, maxthreads=3, name="chatbox-store")
        self._lock: datafile.HistoryLock | None = None
        # Above every id ever handed out, deleted or not: never reused.
        self._next_id = 1
        self._array_bytes = 0
        self._queue: deque[_Message | _Deletion | _Import] = deque()
        self._writing = False
        self._folding: Deferred[None] | None = None
        # A retired journal is on disk, not yet folded into data.json: the
        # history as it was when it was retired (entries, count), which is
        # what its fold writes (and what the new journal's mark describes).
        self._retired: tuple[list[bytes], int] | None = None
        # The new journal's size when it was started (its mark, if any).
        self._journal_base = 0
        self._retry_at = 0.0
        self._retry_call: IDelayedCall | None = None
        self._idle_waiters: list[Deferred[None]] = []
        # Deletions queued or being written (not durable yet): no journal is
        # retired meanwhile, since their entries are already out of memory.
        self._unwritten_deletions = 0
        # Durable deletions waiting for the next retire, and those the
        # retired journal's fold will purge.
        self._purge_next: list[_Deletion] = []
        self._purge_now: list[_Deletion] = []
        # A deletion was written to the journal since it was started.
        self._deleted_since_retire = False
        # Torn writes kept beside the history (path, kept at epoch ms), found
        # at load: they may hold text that retention must remove too.
        self.torn_files: list[tuple[str, int]] = []
        self.healthy = True
        self._failed_writes = 0  # since writing last worked
        self.metrics = metrics or Metrics()

    # -- start-up (blocking: runs before anything listens) ---------------------

    def load(self) -> None:
        """Own and read the history; raises datafile.HistoryFileError or an
        OSError naming its file.

        The lock comes first: a second server on the same files must refuse
        before it reads or writes anything. A journal left by a crash is
        folded into data.json right away, so the server always starts with
        data.json complete and the journal empty (or holding its mark); a
        torn last write is kept in a file of its own before that fold drops
        it.
        """
        self._lock = datafile.HistoryLock(self.path)
        try:
            self._load()
        except BaseException:
            self._lock.release()
            self._lock = None
            raise

    def _load(self) -> None:
        datafile.remove_leftovers(self.path)
        loaded = datafile.load(self.path)
        for message_id, entry in zip(loaded.ids, loaded.entries, strict=True):
            self.history.append(message_id, entry)
        self._next_id = max(loaded.high, self.history.last_id) + 1
        self._array_bytes = sum(map(len, loaded.entries))
        for tail in loaded.torn:
            kept = datafile.keep_torn(self.path, tail)
            self.log.warn(
                "dropped an incomplete last record of {size} bytes at byte "
                "offset {offset} of {path}: a write a crash interrupted (not "
                "acknowledged), or damage no check can tell from one; its bytes "
                "are kept in {kept}",
                size=len(tail.data),
                offset=tail.offset,
                path=tail.path,
                kept=kept,
            )
        self.torn_files = datafile.torn_files(self.path)
        self._journal = self._open_journal(self._journal_path)
        if loaded.needs_fold:
            if loaded.retired is not None:
                # Finish the fold a crash interrupted, as it was: the current
                # journal (and its mark) follows exactly that history.
                entries = loaded.retired[1]
                datafile.fold(self.path, entries, len(entries))
            self._fold_all(self._journal)
        else:
            self._journal_base = self._journal.size  # empty, or only its mark

    def _fold_all(self, journal: datafile.Journal) -> None:
        """Retire the journal and fold everything (blocking: start-up and
        the final fold at shutdown)."""
        entries, count = self.history.entries, len(self.history)
        first = self._mark()
        datafile.fold(
            self.path,
            entries,
            count,
            retire=lambda: journal.retire(self._old_path, first),
        )
        self._journal_base = len(first)

    def _mark(self) -> bytes:
        """The first record of a journal started now: a mark when the
        newest ids were deleted, so they are never handed out again."""
        kept, last = self.history.last_id, self._next_id - 1
        return datafile.mark_record(kept, last) if kept < last else b""

    @property
    def ids_used(self) -> int:
        """How many ids were ever handed out, deleted messages' included."""
        return self._next_id - 1

    def claim(self) -> None:
        """Write our pid into the lock (chatbox.local.datafile.HistoryLock);
        a room loaded at run time does it on its loading thread."""
        if self._lock is not None and not self._claimed:
            self._lock.claim()
            self._claimed = True

    _claimed = False

    def start(self) -> None:
        self.claim()
        self._pool.start()

    # -- serving --

    def append(
        self, name: str, content: str, when: Moment, mark: str | None = None
    ) -> "Deferred[int]":
        """Store one message; fires with its id once durable, or StoreError."""
        done: Deferred[int] = Deferred()
        self._queue.append((name, content, when, mark, done))
        self._write_next()
        return done

    def import_messages(self, imported: list[Imported]) -> "Deferred[list[int]]":
        """Store these messages after the history, in order, with new ids;
        fires with the ids once all of them are durable (written and
        fsync'd like a batch), or fails with StoreError and stores none.
        Send_ids are not involved and nobody is told."""
        try:
            for item in imported:
                _check_imported(item)
        except StoreError as e:
            return fail(e)
        if not imported:
            return succeed([])
        item = _Import(list(imported))
        self._queue.append(item)
        self._write_next()
        return item.done

    def delete(
        self, ids: Iterable[int], durable: Callable[[list[int]], None]
    ) -> "Deferred[list[int]]":
        """Take the messages with these ids out of the history now; once
        their deletion is durable, call `durable` with the ids taken (sorted)
        on the reactor; fire with them once no file holds their content.
        Fails with StoreError (the messages back in the history) if the
        deletion cannot be written. Ids that are not there are left out."""
        removed = self.history.remove(i for i in ids if type(i) is int)
        return self._remove(_Deletion(removed, durable))

    def expire(self, count: int) -> "Deferred[list[int]]":
        """Retention's purge: take the `count` oldest messages out of the
        history now and remove them from every file as a deletion is
        (journal record, then the purge's retire and fold), but in one
        short record whatever their number, and telling nobody (clients
        stopped seeing them at once). Fires with their ids once purged."""
        removed = self.history.remove_prefix(count)
        upto = removed[-1][0] if removed else None
        return self._remove(_Deletion(removed, lambda ids: None, upto))

    def forget_torn(self, before_ms: int | None) -> "Deferred[int]":
        """Remove the torn writes kept before `before_ms` (the time of the
        oldest message retention keeps; None: the room keeps none, so all
        of them), durably, on a pool thread: everything stored before them
        has expired, so whatever text they hold has too. Fires with how
        many were removed."""
        doomed = [
            (path, kept)
            for path, kept in self.torn_files
            if before_ms is None or kept < before_ms
        ]
        if not doomed:
            return succeed(0)

        def remove() -> int:
            for path, _ in doomed:
                datafile.remove_durably(path)
            return len(doomed)

        def removed(count: int) -> int:
            gone = set(doomed)
            self.torn_files = [t for t in self.torn_files if t not in gone]
            self.log.info(
                "retention removed {count} kept torn write(s) beside {path}",
                count=count,
                path=self.path,
            )
            return count

        return self._in_thread(remove).addCallback(removed)

    def _remove(self, deletion: _Deletion) -> "Deferred[list[int]]":
        if not deletion.removed:
            return succeed([])
        if self._journal is None:
            self.history.restore(deletion.removed)
            return fail(StoreError("server shutting down"))
        self._unwritten_deletions += 1
        self._queue.append(deletion)
        self._write_next()
        return deletion.done

    def matching(
        self, name: str, since: int | None, until: int | None
    ) -> "Deferred[list[int]]":
        """The ids of the messages `name` (or a name ARNS holds the same)
        posted within [since, until] (epoch ms; None: open), found on a pool
        thread in the history as it is now."""
        entries, count = self.history.entries, len(self.history)
        return self._in_thread(_matching, entries, count, name, since, until)

    def _in_thread(self, f: Callable[..., object], *args: object) -> Deferred:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def _refuse(
        self, item: "_Message | _Deletion | _Import", error: StoreError
    ) -> None:
        if isinstance(item, _Deletion):
            self._unwritten_deletions -= 1
            self.history.restore(item.removed)
            item.done.errback(error)
        elif isinstance(item, _Import):
            item.done.errback(error)
        else:
            item[-1].errback(error)

    def _write_next(self) -> None:
        if self._writing:
            return
        if not self._queue:
            self._notify_idle()
            return
        if self._journal is None:  # Closed: nothing may be acknowledged now.
            queued, self._queue = self._queue, deque()
            for item in queued:
                self._refuse(item, StoreError("server shutting down"))
            return
        self._writing = True
        first_id = self._next_id
        imported: _Import | None = None
        if self._queue[0].__class__ is _Import:
            imported = self._queue.popleft()  # type: ignore[assignment]
            assert isinstance(imported, _Import)
            deletions: list[_Deletion] = []
            batch, writes = self._take_import(imported)
        else:
            batch, deletions, data = self._take_batch()
            writes = [data]
        self.metrics.batch_size.observe(len(batch) + len(deletions))
        journal = self._journal

        def timed_append() -> float:
            started = time.perf_counter()
            if len(writes) == 1:
                journal.append(writes[0])
            else:
                journal.append_all(writes)
            return time.perf_counter() - started

        written = self._in_thread(timed_append)
        written.addBoth(self._batch_done, batch, deletions, first_id, imported)

    def _take_import(self, imported: _Import) -> tuple[list[_Item], list[bytes]]:
        """An import's records, given ids, in writes of up to
        MAX_BATCH_BYTES each (a crash tears only the last write, as with
        messages); all of them before any other record."""
        batch: list[_Item] = []
        writes: list[bytes] = []
        records: list[bytes] = []
        size = 0
        for message_id, item in enumerate(imported.messages, self._next_id):
            entry = codec.encode_compact(
                messages.history_entry(
                    message_id,
                    item.name,
                    item.content,
                    item.timestamp,
                    item.millis,
                    item.mark,
                )
            )
            record = datafile.record(entry)
            if records and size + len(record) > datafile.MAX_BATCH_BYTES:
                writes.append(b"".join(records))
                records, size = [], 0
            records.append(record)
            size += len(record)
            batch.append((message_id, entry, None))
        writes.append(b"".join(records))
        self._next_id += len(batch)
        return batch, writes

    def _take_batch(self) -> tuple[list[_Item], list[_Deletion], bytes]:
        """The next write: queued messages (given ids and encoded) and
        deletions, up to MAX_BATCH_BYTES (a single larger record goes
        alone); it ends before an import, which is written alone."""
        batch: list[_Item] = []
        deletions: list[_Deletion] = []
        records: list[bytes] = []
        size = 0
        queue = self._queue
        while queue:
            item = queue[0]
            if item.__class__ is _Import:
                break
            if item.__class__ is _Deletion:
                assert isinstance(item, _Deletion)
                record = item.record(self._next_id - 1)
                if records and size + len(record) > datafile.MAX_BATCH_BYTES:
                    break
                queue.popleft()
                deletions.append(item)
                records.append(record)
                size += len(record)
                continue
            name, content, when, mark, done = item  # type: ignore[misc]
            entry = codec.encode_compact(
                messages.history_entry(
                    self._next_id, name, content, when.text, when.millis, mark
                )
            )
            record = datafile.record(entry)
            if records and size + len(record) > datafile.MAX_BATCH_BYTES:
                break  # Encoded again, with the same id, for the next write.
            queue.popleft()
            batch.append((self._next_id, entry, done))
            records.append(record)
            size += len(record)
            self._next_id += 1
        return batch, deletions, b"".join(records)

    def _batch_done(
        self,
        result: object,
        batch: list[_Item],
        deletions: list[_Deletion],
        first_id: int,
        imported: _Import | None = None,
    ) -> None:
        """Settle the store's own state first and acknowledge last: an ack's
        callback may do anything, even close the store, and must find it
        consistent."""
        self._writing = False
        swapping = False
        if isinstance(result, Failure):
            # Nothing was kept, so the ids go back: the journal stays gapless.
            self._next_id = first_id
            # One line when writing starts failing, one when it works again:
            # a full disk under a busy chat fails every batch.
            if self.healthy or not isinstance(result.value, OSError):
                self._log_failure(
                    result,
                    "could not write {count} record(s) to {path}",
                    count=len(batch) + len(deletions),
                    path=self._journal_path,
                )
            self.healthy = False
            self._failed_writes += 1
        else:
            if not self.healthy:
                self.log.info(
                    "writing to {path} works again, after {failed} failed write(s)",
                    path=self._journal_path,
                    failed=self._failed_writes,
                )
            self.healthy = True
            self._failed_writes = 0
            self.metrics.fsync_seconds.observe(result)
            for message_id, entry, _ in batch:
                self.history.append(message_id, entry)
            if deletions:
                self._unwritten_deletions -= len(deletions)
                self._purge_next += deletions
                self._deleted_since_retire = True
            swapping = self._maybe_fold()
        if isinstance(result, Failure):
            error = StoreError(_short(result))
            for deletion in deletions:
                self._refuse(deletion, error)
            if imported is not None:
                imported.done.errback(error)
            for _, _, done in batch:
                if done is not None:
                    done.errback(error)
        else:
            for deletion in deletions:
                self._tell(deletion)
            if imported is not None:
                imported.done.callback([message_id for message_id, _, _ in batch])
            for message_id, _, done in batch:
                if done is not None:
                    done.callback(message_id)
        if not swapping:  # A swap resumes writing when it is done.
            self._write_next()

    def _tell(self, deletion: _Deletion) -> None:
        try:
            deletion.durable(deletion.ids)
        except Exception:
            self.log.failure("telling a deletion failed")

    def _log_failure(self, failure: Failure, message: str, **fields: object) -> None:
        """Disk trouble is one line in the system's words; anything else is
        a bug and gets its traceback."""
        if isinstance(failure.value, OSError):
            self.log.error(message + ": {error}", error=_short(failure), **fields)
        else:
            self.log.failure(message, failure, **fields)

    # -- folding the journal into data.json --

    def _maybe_fold(self) -> bool:
        """Start folding if it is due; True if the writer must wait for a swap.

        A retired journal that could not be folded yet (disk full) is folded
        before another is retired, so it is never renamed over. A purge is
        due as soon as a deletion is durable, but never retires while
        another deletion is unwritten.
        """
        if self._journal is None or self._folding is not None:
            return False
        if self._reactor.seconds() < self._retry_at:
            self._retry_later()
            return False
        if self._retired is not None:
            if not (self._journal_base or self._deleted_since_retire):
                # Nothing since the retire but messages: folding them too
                # is as safe (replay skips what data.json has) and leaves
                # less to replay.
                self._retired = (self.history.entries, len(self.history))
            self._folding = self._fold()
            return False
        if self._unwritten_deletions:
            return False
        if self._purge_next or self._journal.size > max(
            self._fold_threshold, self._array_bytes
        ):
            self._retire_journal()
            return True
        return False

    def _kick(self) -> None:
        """Start a purge that is due while the writer is idle (after a fold,
        or when a retry is due), then carry on writing."""
        self._retry_call = None
        if self._writing or self._journal is None:
            return
        if not self._maybe_fold():
            self._write_next()

    def _failed_fold_step(self, failure: Failure, message: str) -> None:
        """Try again in FOLD_RETRY_SECONDS; with a deletion waiting for its
        purge, even if nothing is written meanwhile."""
        self._retry_at = self._reactor.seconds() + FOLD_RETRY_SECONDS
        self._log_failure(failure, message, path=self.path)
        self._retry_later()

    def _retry_later(self) -> None:
        """A purge waits for the retry: make sure one comes, written to or
        not."""
        if (self._purge_next or self._purge_now) and self._retry_call is None:
            wait = max(0.0, self._retry_at - self._reactor.seconds())
            self._retry_call = self._reactor.callLater(  # type: ignore[attr-defined]
                wait, self._kick
            )

    def _retire_journal(self) -> None:
        """Between two batches: swap in a fresh journal, then fold the old one."""
        assert self._journal is not None
        self._writing = True
        snapshot = (self.history.entries, len(self.history))
        first = self._mark()
        purges, self._purge_next = self._purge_next, []
        retired = self._in_thread(self._journal.retire, self._old_path, first)

        def retired_ok(_: object) -> None:
            self._retired = snapshot
            self._deleted_since_retire = False
            self._journal_base = len(first)
            self._purge_now += purges
            self._folding = self._fold()

        def retire_failed(failure: Failure) -> None:
            self._purge_next[:0] = purges
            self._failed_fold_step(failure, "could not swap the journal of {path}")

        retired.addCallbacks(retired_ok, retire_failed)
        retired.addBoth(self._resume_writing)

    def _resume_writing(self, _: object) -> None:
        self._writing = False
        self._write_next()

    def _fold(self) -> "Deferred[None]":
        """Rewrite data.json with the history as it was when the journal was
        retired, which includes every message of the retired journal and
        none that was deleted before it."""
        assert self._retired is not None
        entries, count = self._retired
        purged: list[_Deletion] = []

        def fold() -> int:
            datafile.fold(self.path, entries, count)
            return sum(map(len, entries[:count]))

        def folded(array_bytes: int) -> None:
            self._array_bytes = array_bytes
            self._retired = None
            purged.extend(self._purge_now)
            self._purge_now = []
            if purged:
                self.log.info(
                    "purged {deleted} deleted or expired message(s) from {path}",
                    deleted=sum(len(d.ids) for d in purged),
                    path=self.path,
                )
            self.log.info(
                "folded {count} messages into {path}", count=count, path=self.path
            )

        def failed(failure: Failure) -> None:
            # The retired journal stays on disk and is folded on a later try.
            self._failed_fold_step(failure, "could not fold the journal into {path}")

        def finished(_: object) -> None:
            self._folding = None
            for deletion in purged:
                deletion.done.callback(sorted(deletion.ids))
            self._notify_idle()
            if self._purge_next or self._retired is not None:
                self._kick()

        folding = self._in_thread(fold)
        folding.addCallbacks(folded, failed)
        folding.addBoth(finished)
        return folding

    # -- flushing and shutdown --

    def _notify_idle(self) -> None:
        if self._writing or self._queue or self._folding is not None:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def flush(self) -> "Deferred[None]":
        """Fires once every message appended so far is settled on disk (a
        purge that is failing is not waited for)."""
        if not (self._writing or self._queue or self._folding is not None):
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    async def close(self, last: Callable[[], None] | None = None) -> bool:
        """Flush, fold everything into data.json, and release the threads.

        `last` runs on a pool thread after the fold, while the lock is still
        held: the room's own file (its send_ids) is written there. True when
        data.json now holds the whole history; False when the fold failed
        (the journal keeps everything and start-up folds it). Deletions
        waiting for a purge are purged by this fold, or fail with
        StoreError if it fails (they stay durable: start-up purges them).
        """
        await self.flush()
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        journal, self._journal = self._journal, None
        complete = True
        purges, self._purge_now, self._purge_next = (
            self._purge_now + self._purge_next,
            [],
            [],
        )
        if journal is not None:
            retired = self._retired
            needs_fold = journal.size > self._journal_base or retired is not None

            def final_fold() -> None:
                try:
                    if retired is not None:
                        datafile.fold(self.path, *retired)
                    if needs_fold:
                        self._fold_all(journal)
                finally:
                    journal.close()

            try:
                await self._in_thread(final_fold)
            except OSError as e:
                complete = False
                self.log.error(
                    "could not fold history into {path} ({file}: {error}); "
                    "the journal keeps it for the next start",
                    path=self.path,
                    file=e.filename,
                    error=e.strerror,
                )
        for deletion in purges:
            if complete:
                deletion.done.callback(sorted(deletion.ids))
            else:
                deletion.done.errback(
                    StoreError("deleted, but not yet purged from the files")
                )
        if last is not None:
            try:
                await self._in_thread(last)
            except OSError as e:
                self.log.warn(
                    "could not write {file}: {error}",
                    file=e.filename,
                    error=e.strerror,
                )
        self._pool.stop()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        return complete
