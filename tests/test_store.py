"""The Deferred-based writer: durability, group commit, folding, failures."""

import json
import os
import shutil
import threading
import zlib

import pytest
import pytest_twisted
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList

from chatbox.local import datafile
from chatbox.local.store import FOLD_RETRY_SECONDS, DurableStore, StoreError
from chatbox.wire.clock import Moment

T = Moment("24/11/2026, 14:05:09", 1795964709000)


@pytest_twisted.async_yield_fixture
async def store(tmp_path):
    s = DurableStore(str(tmp_path / "data.json"), reactor)
    s.load()
    s.start()
    yield s
    await s.close()


class Journals:
    """Opens the store's journals and sees every write: `writes` holds, per
    append, the bytes and the history's length when it started; `full`
    sends appends to /dev/full, as a full disk would refuse them."""

    def __init__(self) -> None:
        self.writes: list[tuple[bytes, int]] = []
        self.full = False
        self.store: DurableStore | None = None

    def open(self, path: str) -> datafile.Journal:
        journals = self

        class Watched(datafile.Journal):
            def append(self, data: bytes) -> None:
                assert journals.store is not None
                journals.writes.append((data, len(journals.store.history)))
                if journals.full:
                    full = datafile.Journal("/dev/full")
                    try:
                        full.append(data)
                    finally:
                        full.close()
                super().append(data)

        return Watched(path)


@pytest_twisted.async_yield_fixture
async def watched(tmp_path):
    """(store, journals): a started store whose journal writes the test sees."""
    journals = Journals()
    s = DurableStore(str(tmp_path / "data.json"), reactor, open_journal=journals.open)
    journals.store = s
    s.load()
    s.start()
    yield s, journals
    await s.close()


def reopen(path):
    s = DurableStore(path, reactor)
    s.load()
    return s


class HeldFsync:
    """A journal fsync the test holds: `entered` fires (on the reactor) when
    a write reaches its fsync, which then waits until `release()`. `order`
    records, from either thread, when each fsync returned and each ack came."""

    def __init__(self) -> None:
        self.entered: Deferred[None] = Deferred()
        self.order: list[str] = []
        self._open = threading.Event()

    def fsync(self, fd: int) -> None:
        if not self._open.is_set():
            reactor.callFromThread(self.entered.callback, None)
            self._open.wait()
        os.fsync(fd)
        self.order.append("fsync returned")

    def release(self) -> None:
        self._open.set()


@ensureDeferred
async def test_an_append_is_acknowledged_only_after_its_fsync_returns(tmp_path):
    held = HeldFsync()
    store = DurableStore(
        str(tmp_path / "data.json"),
        reactor,
        open_journal=lambda path: datafile.Journal(path, fsync=held.fsync),
    )
    store.load()
    store.start()
    try:
        acked = store.append("An", "hi", T)
        acked.addCallback(lambda message_id: held.order.append("acked") or message_id)
        # Whichever comes first: the write reaching its fsync, or the ack.
        await DeferredList([held.entered, acked], fireOnOneCallback=True)
        assert held.entered.called, "acknowledged without an fsync being reached"
        # The write is in the file, its fsync has not returned: no ack yet,
        # and the message is not in the history others read.
        journal, _ = datafile.journal_paths(store.path)
        with open(journal, "rb") as f:
            record = f.readline()
        assert json.loads(record[9:])["content"] == "hi"
        assert not acked.called
        assert len(store.history) == 0
        held.release()
        assert await acked == 1
        assert held.order[:2] == ["fsync returned", "acked"]
        assert record[:9] == b"%08x " % zlib.crc32(record[9:-1])
        assert json.loads(record[9:]) == {
            "id": 1,
            "name": "An",
            "content": "hi",
            "timestamp": T.text,
            "time": T.millis,
        }
        assert len(store.history) == 1
    finally:
        held.release()
        await store.close()


@ensureDeferred
async def test_concurrent_appends_share_writes(watched):
    store, journals = watched
    results = await DeferredList([store.append("An", f"m{i}", T) for i in range(200)])
    assert [r for ok, r in results] == list(range(1, 201))
    batches = [data.count(b"\n") for data, _ in journals.writes]
    assert sum(batches) == 200
    assert len(batches) < 50, batches  # one fsync served many messages


@ensureDeferred
async def test_history_only_shows_durable_messages(store):
    pending = store.append("An", "in flight", T)
    assert len(store.history) == 0
    await pending
    assert len(store.history) == 1


@ensureDeferred
async def test_close_folds_everything_into_data_json(tmp_path):
    store = reopen(str(tmp_path / "data.json"))
    store.start()
    for i in range(10):
        await store.append("An", f"m{i}", T)
    await store.close()
    saved = json.loads((tmp_path / "data.json").read_text())
    assert [m["content"] for m in saved] == [f"m{i}" for i in range(10)]
    assert (tmp_path / "data.json.journal").stat().st_size == 0


@ensureDeferred
async def test_the_journal_is_folded_when_it_outgrows_data_json(tmp_path):
    path = str(tmp_path / "data.json")
    store = DurableStore(path, reactor, fold_threshold=2_000)
    store.load()
    store.start()
    try:
        for i in range(300):
            await store.append("An", f"message {i}", T)
        await store.flush()
        saved = json.loads((tmp_path / "data.json").read_text())
        assert len(saved) > 100  # folded at least once while running
        assert [m["id"] for m in saved] == list(range(1, len(saved) + 1))
        assert not (tmp_path / "data.json.journal.old").exists()
    finally:
        await store.close()
    again = reopen(path)
    assert len(again.history) == 300 and again.history.last_id == 300


@ensureDeferred
async def test_start_up_folds_a_journal_left_by_a_crash(tmp_path):
    path = str(tmp_path / "data.json")
    store = reopen(path)
    store.start()
    for i in range(5):
        await store.append("An", f"m{i}", T)
    left = await crash(store, tmp_path)
    assert (left / "data.json.journal").stat().st_size > 0
    assert not (left / "data.json").exists()  # everything is in the journal
    again = reopen(str(left / "data.json"))
    assert again.history.last_id == 5
    assert len(json.loads((left / "data.json").read_text())) == 5
    assert (left / "data.json.journal").stat().st_size == 0
    assert (await _append_after(again)) == 6


async def crash(store, tmp_path):
    """What a kill -9 leaves: the files as they are while the store runs (no
    close, no fold), copied elsewhere; the store itself then closes as usual.
    Returns the folder that holds the copy."""
    left = tmp_path / "after-crash"
    left.mkdir()
    folder = os.path.dirname(store.path)
    for name in os.listdir(folder):
        if name.startswith("data.json") and not name.endswith(".lock"):
            shutil.copy2(os.path.join(folder, name), left / name)
    await store.close()
    return left


async def _append_after(store):
    store.start()
    try:
        return await store.append("An", "next", T)
    finally:
        await store.close()


@ensureDeferred
async def test_a_failed_write_is_refused_and_the_next_one_succeeds(watched):
    store, journals = watched
    journals.full = True
    try:
        await store.append("An", "lost", T)
    except StoreError as e:
        assert str(e) == "No space left on device"
    else:
        raise AssertionError("append to a full disk succeeded")
    assert not store.healthy and len(store.history) == 0
    journals.full = False
    # The refused message's id is given back: the journal stays gapless.
    assert await store.append("An", "kept", T) == 1
    assert store.healthy
    assert [json.loads(e)["content"] for e in store.history.entries] == ["kept"]


class Later:
    """The test reactor, with its clock `skip` seconds ahead."""

    skip = 0.0

    def seconds(self) -> float:
        return reactor.seconds() + self.skip

    def __getattr__(self, name: str) -> object:
        return getattr(reactor, name)


@ensureDeferred
async def test_a_failed_fold_keeps_the_retired_journal_until_a_retry_folds_it(
    tmp_path, monkeypatch
):
    import errno
    import os

    path = str(tmp_path / "data.json")
    old = tmp_path / "data.json.journal.old"
    real_write_array = datafile.write_array

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    later = Later()
    store = DurableStore(path, later, fold_threshold=500)
    store.load()
    store.start()
    try:
        monkeypatch.setattr(datafile, "write_array", disk_full)
        for i in range(20):  # enough to pass the threshold and retire
            await store.append("An", f"early {i}", T)
        await store.flush()
        assert old.exists()
        retired = old.read_bytes()
        for i in range(40):  # the journal outgrows the threshold again
            await store.append("An", f"late {i}", T)
        await store.flush()
        assert old.read_bytes() == retired  # never renamed over
        assert store.healthy  # acknowledged writes kept working throughout

        monkeypatch.setattr(datafile, "write_array", real_write_array)
        later.skip = FOLD_RETRY_SECONDS  # the retry is due
        await store.append("An", "after the disk has room", T)
        await store.flush()
        assert not old.exists()
        saved = json.loads((tmp_path / "data.json").read_text())
        assert [m["content"] for m in saved][:20] == [f"early {i}" for i in range(20)]
    finally:
        await store.close()
    assert len(reopen(path).history) == 61


@ensureDeferred
async def test_a_big_burst_is_written_in_capped_batches_each_acked_when_durable(
    watched,
):
    store, journals = watched
    content = "ü" * 1000
    sent = [store.append("An", content, T) for _ in range(3000)]
    results = await DeferredList(sent)
    assert [r for ok, r in results] == list(range(1, 3001))
    writes = [(len(data), before) for data, before in journals.writes]
    assert len(writes) > 2
    assert all(size <= datafile.MAX_BATCH_BYTES for size, _ in writes), writes
    # Each write's messages entered the history (and were acked) before the
    # next write started: acknowledgement does not wait for the whole burst.
    assert [before for _, before in writes] == sorted({b for _, b in writes})
    assert writes[1][1] > 0
    assert datafile.load(store.path).ids == list(range(1, 3001))


@ensureDeferred
async def test_a_message_larger_than_a_batch_goes_alone(watched):
    store, journals = watched
    big = "x" * (datafile.MAX_BATCH_BYTES + 10)
    sent = [store.append("An", text, T) for text in ("a", "b", big, "c")]
    results = await DeferredList(sent)
    assert [r for ok, r in results] == [1, 2, 3, 4]
    writes = [data.count(b"\n") for data, _ in journals.writes]
    # a is written at once; b is queued, and big would take b's write past
    # the cap, so it waits for a write of its own, and c for the next one.
    assert writes == [1, 1, 1, 1]
    assert datafile.load(store.path).ids == [1, 2, 3, 4]


@ensureDeferred
async def test_a_second_store_on_the_same_file_refuses_until_the_first_closes(
    tmp_path,
):
    path = str(tmp_path / "data.json")
    first = reopen(path)
    first.start()
    try:
        await first.append("An", "one", T)
        journal = (tmp_path / "data.json.journal").read_bytes()
        with pytest.raises(datafile.HistoryFileError, match="is in use by another"):
            second = reopen(path)
            second._pool.stop()  # Only reached when the lock is broken.
        assert (tmp_path / "data.json.journal").read_bytes() == journal
        assert not (tmp_path / "data.json").exists()
    finally:
        await first.close()
    again = reopen(path)
    assert again.history.last_id == 1
    await _append_after(again)


@ensureDeferred
async def test_start_up_keeps_a_torn_tail_beside_the_history_and_logs_it(
    tmp_path, no_logged_failures
):
    from twisted.logger import globalLogPublisher

    path = str(tmp_path / "data.json")
    store = reopen(path)
    store.start()
    await store.append("An", "kept", T)
    left = await crash(store, tmp_path)
    path = str(left / "data.json")
    torn = b'0badc0de {"id":2,"name":"An","con'
    with open(path + ".journal", "ab") as f:
        f.write(torn)
    size = (left / "data.json.journal").stat().st_size
    said = []
    globalLogPublisher.addObserver(said.append)
    try:
        again = reopen(path)
    finally:
        globalLogPublisher.removeObserver(said.append)
    [kept] = left.glob("data.json.torn-*")
    assert kept.read_bytes() == torn
    [warning] = [e for e in said if e.get("kept") == str(kept)]
    assert warning["size"] == len(torn) and warning["offset"] == size - len(torn)
    assert again.history.last_id == 1
    assert (await _append_after(again)) == 2
