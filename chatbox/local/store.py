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
"""

import os
import time
from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from chatbox.chat.room import RoomError
from chatbox.local import datafile
from chatbox.local.history import History
from chatbox.metrics import Metrics
from chatbox.wire import codec, messages
from chatbox.wire.clock import Moment

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
        self._pool = ThreadPool(minthreads=0, maxthreads=2, name="chatbox-store")
        self._lock: datafile.HistoryLock | None = None
        self._next_id = 1
        self._array_bytes = 0
        self._queue: deque[tuple[str, str, Moment, Deferred[int]]] = deque()
        self._writing = False
        self._folding: Deferred[None] | None = None
        # A retired journal is on disk, not yet folded into data.json.
        self._retired_pending = False
        self._retry_at = 0.0
        self._idle_waiters: list[Deferred[None]] = []
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
        data.json complete and the journal empty; a torn last write is kept
        in a file of its own before that fold drops it.
        """
        self._lock = datafile.HistoryLock(self.path)
        try:
            self._load()
        except BaseException:
            self._lock.release()
            self._lock = None
            raise

    def _load(self) -> None:
        loaded = datafile.load(self.path)
        for message_id, entry in zip(loaded.ids, loaded.entries, strict=True):
            self.history.append(message_id, entry)
        self._next_id = self.history.last_id + 1
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
        self._journal = self._open_journal(self._journal_path)
        if loaded.needs_fold:
            datafile.fold(
                self.path, self.history.entries, len(self.history), self._journal
            )

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

    def append(self, name: str, content: str, when: Moment) -> "Deferred[int]":
        """Store one message; fires with its id once durable, or StoreError."""
        done: Deferred[int] = Deferred()
        self._queue.append((name, content, when, done))
        self._write_next()
        return done

    def _in_thread(self, f: Callable[..., object], *args: object) -> Deferred:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def _write_next(self) -> None:
        if self._writing:
            return
        if not self._queue:
            self._notify_idle()
            return
        if self._journal is None:  # Closed: nothing may be acknowledged now.
            queued, self._queue = self._queue, deque()
            for *_, done in queued:
                done.errback(StoreError("server shutting down"))
            return
        self._writing = True
        batch, data = self._take_batch()
        self.metrics.batch_size.observe(len(batch))
        journal = self._journal

        def timed_append() -> float:
            started = time.perf_counter()
            journal.append(data)
            return time.perf_counter() - started

        written = self._in_thread(timed_append)
        written.addBoth(self._batch_done, batch)

    def _take_batch(self) -> tuple[list[tuple[int, bytes, Deferred[int]]], bytes]:
        """The next write: queued messages, given ids and encoded, up to
        MAX_BATCH_BYTES (a single larger message goes alone)."""
        batch: list[tuple[int, bytes, Deferred[int]]] = []
        records: list[bytes] = []
        size = 0
        while self._queue:
            name, content, when, done = self._queue[0]
            entry = codec.encode_compact(
                messages.history_entry(
                    self._next_id, name, content, when.text, when.millis
                )
            )
            record = datafile.record(entry)
            if records and size + len(record) > datafile.MAX_BATCH_BYTES:
                break  # Encoded again, with the same id, for the next write.
            self._queue.popleft()
            batch.append((self._next_id, entry, done))
            records.append(record)
            size += len(record)
            self._next_id += 1
        return batch, b"".join(records)

    def _batch_done(
        self, result: object, batch: list[tuple[int, bytes, Deferred[int]]]
    ) -> None:
        """Settle the store's own state first and acknowledge last: an ack's
        callback may do anything, even close the store, and must find it
        consistent."""
        self._writing = False
        swapping = False
        if isinstance(result, Failure):
            # Nothing was kept, so the ids go back: the journal stays gapless.
            self._next_id = batch[0][0]
            # One line when writing starts failing, one when it works again:
            # a full disk under a busy chat fails every batch.
            if self.healthy or not isinstance(result.value, OSError):
                self._log_failure(
                    result,
                    "could not write {count} message(s) to {path}",
                    count=len(batch),
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
            swapping = self._maybe_fold()
        if isinstance(result, Failure):
            error = StoreError(_short(result))
            for _, _, done in batch:
                done.errback(error)
        else:
            for message_id, _, done in batch:
                done.callback(message_id)
        if not swapping:  # A swap resumes writing when it is done.
            self._write_next()

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
        before another is retired, so it is never renamed over.
        """
        if self._journal is None or self._folding is not None:
            return False
        if self._reactor.seconds() < self._retry_at:
            return False
        if self._retired_pending:
            self._folding = self._fold(len(self.history))
            return False
        if self._journal.size > max(self._fold_threshold, self._array_bytes):
            self._retire_journal()
            return True
        return False

    def _retire_journal(self) -> None:
        """Between two batches: swap in a fresh journal, then fold the old one."""
        assert self._journal is not None
        self._writing = True
        count = len(self.history)
        retired = self._in_thread(self._journal.retire, self._old_path)

        def retired_ok(_: object) -> None:
            self._retired_pending = True
            self._folding = self._fold(count)

        def retire_failed(failure: Failure) -> None:
            self._retry_at = self._reactor.seconds() + FOLD_RETRY_SECONDS
            self._log_failure(
                failure, "could not swap the journal {path}", path=self._journal_path
            )

        retired.addCallbacks(retired_ok, retire_failed)
        retired.addBoth(self._resume_writing)

    def _resume_writing(self, _: object) -> None:
        self._writing = False
        self._write_next()

    def _fold(self, count: int) -> "Deferred[None]":
        """Rewrite data.json with the first `count` messages, which include
        every message of the retired journal."""
        entries = self.history.entries

        def fold() -> int:
            datafile.fold(self.path, entries, count)
            return sum(map(len, entries[:count]))

        def folded(array_bytes: int) -> None:
            self._array_bytes = array_bytes
            self._retired_pending = False
            self.log.info(
                "folded {count} messages into {path}", count=count, path=self.path
            )

        def failed(failure: Failure) -> None:
            # The retired journal stays on disk and is folded on a later try.
            self._retry_at = self._reactor.seconds() + FOLD_RETRY_SECONDS
            self._log_failure(
                failure, "could not fold the journal into {path}", path=self.path
            )

        def finished(_: object) -> None:
            self._folding = None
            self._notify_idle()

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
        """Fires once every message appended so far is settled on disk."""
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
        (the journal keeps everything and start-up folds it).
        """
        await self.flush()
        journal, self._journal = self._journal, None
        complete = True
        if journal is not None:
            count = len(self.history)
            needs_fold = journal.size > 0 or self._retired_pending

            def final_fold() -> None:
                try:
                    if needs_fold:
                        datafile.fold(self.path, self.history.entries, count, journal)
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
