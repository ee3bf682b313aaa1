"""Deletions on disk: the journal's deletion records and marks, replay's gap
checks with deletions' gaps, the in-memory history's removals, and a store
crashed at every step of deletions, sends and folds."""

import contextlib
import json
import os
import shutil
import threading
import zlib
from pathlib import Path

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import defer, reactor
from twisted.internet.defer import DeferredList, gatherResults
from twisted.internet.task import deferLater

from chatbox.local import datafile
from chatbox.local.history import History
from chatbox.local.store import DurableStore, StoreError
from chatbox.wire import codec
from chatbox.wire.clock import Moment

T = Moment("24/11/2026, 14:05:09", 1795964709000)


def entry(message_id, content="hi", **more):
    return {
        "id": message_id,
        "name": "An",
        "content": content,
        "timestamp": "01/01/2026, 00:00:00",
        **more,
    }


def body_line(value):
    """A journal record, built here from the format, not by the code under test."""
    body = json.dumps(value, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def line(message_id, content="hi"):
    return body_line(entry(message_id, content))


def deletion(ids, last):
    return body_line({"deleted": ids, "last": last})


def mark(follows, last):
    return body_line({"follows": follows, "last": last})


def history_file(path, *ids):
    path.write_text(json.dumps([entry(i, f"m{i}") for i in ids]))


def journal(path, *records, old=False):
    current, retired = datafile.journal_paths(str(path))
    with open(retired if old else current, "wb") as f:
        f.write(b"".join(records))


def ids_of(loaded):
    return [codec.decode(e)["id"] for e in loaded.entries]


def refused(path):
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    with pytest.raises(datafile.HistoryFileError) as caught:
        datafile.load(str(path))
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before
    assert "Recovering a damaged history" in str(caught.value)
    return str(caught.value)


# -- the record shapes --


def test_a_deletion_record_holds_ids_and_the_last_id_never_content():
    record = datafile.deletion_record([3, 7], 9)
    assert record == deletion([3, 7], 9)
    assert record.endswith(b' {"deleted":[3,7],"last":9}\n')


def test_a_mark_records_the_newest_kept_and_the_last_handed_out():
    assert datafile.mark_record(4, 9) == mark(4, 9)


# -- replay --


def test_a_deletion_removes_and_the_newest_deleted_id_is_still_the_high_mark(
    tmp_path,
):
    path = tmp_path / "data.json"
    history_file(path, 1, 2, 3)
    journal(path, line(4), line(5), deletion([2, 5], 5))
    loaded = datafile.load(str(path))
    assert ids_of(loaded) == loaded.ids == [1, 3, 4]
    assert loaded.high == 5
    assert loaded.needs_fold


def test_a_message_after_a_deletion_must_follow_the_last_id(tmp_path):
    path = tmp_path / "data.json"
    history_file(path, 1, 2)
    journal(path, deletion([2], 2), line(3))
    assert datafile.load(str(path)).ids == [1, 3]
    journal(path, deletion([2], 2), line(4))
    said = refused(path)
    assert "line 2" in said and "holds message id 4 where id 3 must follow" in said


def test_a_journal_after_deleted_newest_starts_with_a_mark(tmp_path):
    path = tmp_path / "data.json"
    history_file(path, 1, 2, 4)  # 3 deleted, and 5, 6 (the newest) too
    journal(path, mark(4, 6), line(7))
    loaded = datafile.load(str(path))
    assert loaded.ids == [1, 2, 4, 7] and loaded.high == 7
    journal(path, mark(4, 6))
    loaded = datafile.load(str(path))
    assert loaded.high == 6
    assert not loaded.needs_fold  # a journal holding only its mark is folded


def test_an_emptied_data_json_under_a_mark_refuses(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("")
    journal(path, mark(4, 6), line(7))
    said = refused(path)
    assert said.startswith(f"{path}.journal: line 1 (byte offset 0)")
    assert "newest message is id 4, but the history before it ends at id 0" in said


def test_an_emptied_data_json_is_right_when_everything_was_deleted(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("[]")
    journal(path, mark(0, 6), line(7))
    loaded = datafile.load(str(path))
    assert loaded.ids == [7] and loaded.high == 7


def test_an_emptied_data_json_under_a_deletion_refuses(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("")
    journal(path, deletion([5], 5), line(6))
    said = refused(path)
    assert f"a deletion made when ids had reached 5, but {path} ends at id 0" in said


def test_an_emptied_data_json_under_messages_and_deletions_refuses(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("")
    journal(path, line(3), deletion([3], 3), line(4))
    said = refused(path)
    assert f"holds message id 3, but {path} ends at id 0" in said


def test_a_mark_anywhere_but_first_is_damage(tmp_path):
    path = tmp_path / "data.json"
    history_file(path, 1)
    journal(path, line(2), mark(1, 2))
    assert "not its journal's first record" in refused(path)


def test_a_deletion_of_ids_past_its_last_is_damage(tmp_path):
    path = tmp_path / "data.json"
    history_file(path, 1)
    journal(path, deletion([1, 9], 1))
    assert "'deleted' must be ids up to 1" in refused(path)


def retired_then_folded(tmp_path):
    """The files as a crash leaves them after a purge wrote data.json but
    before it removed the retired journal: data.json is newer than the old
    journal's first record. Ids 1..6; 5 and 6 deleted before the retire
    (whose history ended at 4); 7 written since."""
    path = tmp_path / "data.json"
    history_file(path, 1, 2, 3, 4)
    journal(path, line(5), line(6), deletion([5, 6], 6), old=True)
    journal(path, mark(4, 6), line(7))
    return path


def test_a_fold_written_before_its_old_journal_was_removed_is_no_damage(tmp_path):
    path = retired_then_folded(tmp_path)
    loaded = datafile.load(str(path))
    assert loaded.ids == [1, 2, 3, 4, 7] and loaded.high == 7
    assert loaded.retired is not None and loaded.retired[0] == [1, 2, 3, 4]


def test_a_doubted_old_journal_with_data_json_emptied_refuses(tmp_path):
    path = retired_then_folded(tmp_path)
    path.write_text("")
    said = refused(path)
    assert said.startswith(f"{path}.journal.old: line 1 (byte offset 0)")


def test_a_doubted_old_journal_with_data_json_cut_short_refuses(tmp_path):
    path = retired_then_folded(tmp_path)
    history_file(path, 1, 2, 3)
    said = refused(path)
    assert said.startswith(f"{path}.journal.old: line 1 (byte offset 0)")


def test_an_old_journal_that_began_with_a_mark_under_a_later_fold(tmp_path):
    """Two purges: the first left data.json ending at 4 with a mark (5, 6
    deleted); the second retired that journal (7, 8; 8 and 4 deleted) and
    wrote data.json before the crash."""
    path = tmp_path / "data.json"
    history_file(path, 1, 2, 3, 7)
    journal(path, mark(4, 6), line(7), line(8), deletion([8, 4], 8), old=True)
    journal(path, mark(7, 8))
    loaded = datafile.load(str(path))
    assert loaded.ids == [1, 2, 3, 7] and loaded.high == 8
    # Before that second fold wrote data.json, the same journals read the same.
    history_file(path, 1, 2, 3, 4)
    assert datafile.load(str(path)).ids == [1, 2, 3, 7]
    # Emptied: the old journal's mark does not follow it, nor is it the fold.
    path.write_text("")
    assert "newest message is id 4, but the history before it ends at id 0" in (
        refused(path)
    )


def test_announcements_keep_their_marker_through_a_reload(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([entry(1, "hello", announcement=True), entry(2)]))
    journal(path, body_line(entry(3, "again", announcement=True)))
    stored = [codec.decode(e) for e in datafile.load(str(path)).entries]
    assert [m.get("announcement") for m in stored] == [True, None, True]


def test_start_up_removes_temporary_files_a_crash_left(tmp_path):
    path = tmp_path / "data.json"
    (tmp_path / "data.json.tmp").write_text("deleted secret")
    (tmp_path / "data.json.journal.tmp").write_bytes(mark(0, 3))
    store = DurableStore(str(path), reactor)
    store.load()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "data.json.journal",
        "data.json.lock",
    ]


# -- the history in memory --


def filled(count):
    history = History()
    for i in range(1, count + 1):
        history.append(i, b'{"id":%d,"c":"%s"}' % (i, b"x" * i))
    return history


def test_removal_keeps_pages_by_id_count_and_bytes_right():
    history = filled(20)
    old = history.entries
    removed = history.remove([20, 5, 6, 99, 5])
    assert [i for i, _ in removed] == [5, 6, 20]
    assert len(old) == 20  # a fold holding the old list sees it unchanged
    assert len(history) == 17 and history.last_id == 19
    page = [codec.decode(e)["id"] for e in history.page(4, before=9)]
    assert page == [3, 4, 7, 8]
    assert [codec.decode(e)["id"] for e in history.page(3, 10, after=4)] == [7, 8, 9]
    # Entries 17..19 take 25+26+27 bytes (id 1's is 10 + 1 byte): two fit.
    sizes = {i: len(history.entry(i)) for i in (17, 18, 19)}
    bound = sizes[18] + sizes[19]
    ids = [codec.decode(e)["id"] for e in history.page(10, max_bytes=bound)]
    assert ids == [18, 19]
    assert history.entry(5) is None and history.entry(7) is not None
    history.restore(removed)
    assert [codec.decode(e)["id"] for e in history.page(100)] == list(range(1, 21))


def test_a_page_bounded_by_bytes_does_not_count_a_removed_entry():
    history = History()
    for i in range(1, 11):
        history.append(i, b'{"id":%d,"c":"%s"}' % (i, b"x" * (1000 if i == 8 else 5)))
    history.remove([8])
    bound = sum(len(history.entry(i)) for i in (7, 9, 10))
    ids = [codec.decode(e)["id"] for e in history.page(10, max_bytes=bound)]
    assert ids == [7, 9, 10]
    history.append(21, b"{}")
    assert history.last_id == 21


# -- a store crashed at every step --


class Steps:
    """Copies the folder before and after every rename, unlink and ftruncate
    and after every fsync, whichever thread makes them: each copy is what a
    kill -9 at that point leaves. With each copy, what was acknowledged by
    then (the counters the reactor bumps)."""

    def __init__(self, folder: Path, monkeypatch) -> None:
        self.folder = folder
        self.copies: list[tuple[dict[str, bytes], dict]] = []
        self.state: dict = {"acked": {}, "durable": set(), "purged": set()}
        self._lock = threading.Lock()
        for name in ("rename", "replace", "unlink", "ftruncate", "fsync"):
            monkeypatch.setattr(os, name, self._watched(getattr(os, name), name))
        # Bound as default arguments before the patch: the journal's is given.
        self.fsync = self._watched(os.fsync.__wrapped__, "fsync")

    def _take(self) -> None:
        with self._lock:
            state = {
                "acked": dict(self.state["acked"]),
                "durable": set(self.state["durable"]),
                "purged": set(self.state["purged"]),
            }
            files = {}
            for p in self.folder.iterdir():
                if p.name != "data.json.lock":
                    with contextlib.suppress(FileNotFoundError):
                        files[p.name] = p.read_bytes()
            self.copies.append((files, state))

    def _watched(self, real, name):
        def call(*args, **kwargs):
            ours = name in ("fsync", "ftruncate") or str(args[0]).startswith(
                str(self.folder)
            )
            if ours and name != "fsync":
                self._take()
            result = real(*args, **kwargs)
            if ours:
                self._take()
            return result

        call.__wrapped__ = real
        return call


def check_copy(files, state, where: Path) -> None:
    if where.exists():
        shutil.rmtree(where)
    where.mkdir()
    for name, data in files.items():
        (where / name).write_bytes(data)
    store = DurableStore(str(where / "data.json"), reactor)
    store.load()  # raises on damage: none may be reported
    try:
        kept = {codec.decode(e)["id"]: codec.decode(e) for e in store.history.entries}
        for message_id, content in state["acked"].items():
            if message_id in state["durable"]:
                assert message_id not in kept, f"{message_id} came back"
            elif message_id not in state["maybe"]:
                assert kept[message_id]["content"] == content, f"{message_id} lost"
        if state["acked"]:
            assert store._next_id > max(state["acked"]), "an id would be reused"
        # After start-up nothing durably deleted is in any file.
        on_disk = b"".join(p.read_bytes() for p in where.iterdir())
        for message_id in state["durable"]:
            secret = state["acked"][message_id].encode()
            assert secret not in on_disk, f"{message_id} still on disk"
    finally:
        store._lock.release()
        store._journal.close()


@ensureDeferred
async def test_a_kill_at_any_step_of_deletions_sends_and_folds(tmp_path, monkeypatch):
    folder = tmp_path / "live"
    folder.mkdir()
    steps = Steps(folder, monkeypatch)
    store = DurableStore(
        str(folder / "data.json"),
        reactor,
        fold_threshold=3000,
        open_journal=lambda path: datafile.Journal(path, fsync=steps.fsync),
    )
    store.load()
    store.start()
    acked: dict[int, str] = steps.state["acked"]
    asked: set[int] = set()  # deletions asked for: present or not, until durable
    contents = {}

    async def send(i):
        content = f"msg-{i:04d}-\U0001f600"
        message_id = await store.append("An" if i % 3 else "Bo", content, T)
        contents[message_id] = content
        with steps._lock:
            acked[message_id] = content

    def durable(ids):
        with steps._lock:
            steps.state["durable"].update(ids)

    async def delete(ids):
        asked.update(ids)
        deleted = await store.delete(ids, durable)
        with steps._lock:
            steps.state["purged"].update(deleted)
        return deleted

    try:
        for round_ in range(12):
            base = round_ * 30
            await gatherResults(
                [defer.ensureDeferred(send(base + i)) for i in range(25)]
            )
            newest = max(acked)
            # Odd rounds: the newest deleted with nothing sent after it, so
            # its purge leaves a mark.
            sends = [send(base + 25 + i) for i in range(5 * (round_ % 2 == 0))]
            # In one go: the first goes down alone, the second waits behind
            # it; a journal retired between them would lack the second.
            deletes = [delete([newest]), delete([newest - 7, newest - 8])]
            if round_ % 4 == 1:
                deletes.reverse()
            results = await DeferredList(
                [*map(defer.ensureDeferred, [*sends, *deletes])],
                consumeErrors=True,
            )
            assert all(ok for ok, _ in results), results
        by_name = await store.matching("bo", None, None)
        await delete(by_name[: len(by_name) // 2])
        await store.flush()
    finally:
        await store.close()
    assert steps.state["purged"] == asked & set(acked)
    print(f"{len(steps.copies)} crash points")
    assert len(steps.copies) > 100

    def seen(files):
        journal = files.get("data.json.journal", b"")
        return (
            "data.json.journal.old" in files,
            journal[9:].startswith(b'{"follows":'),
            b'{"deleted":' in files.get("data.json.journal.old", b"") + journal,
        )

    states = {seen(files) for files, _ in steps.copies}
    # Among them: a retired journal beside a marked one, deletions unpurged.
    assert {(True, True, True), (False, True, False), (False, False, True)} <= states
    for index, (files, state) in enumerate(steps.copies):
        # Deletions asked for but not yet durable at the copy: either way.
        state["maybe"] = asked
        try:
            check_copy(files, state, tmp_path / "copy")
        except AssertionError:
            print("copy", index)
            for name, data in sorted(files.items()):
                print(name, data[-600:] if name.endswith("json") else data)
            raise
    # And the purge left no file holding a deleted message.
    on_disk = b"".join(p.read_bytes() for p in folder.iterdir())
    for message_id in asked & set(acked):
        assert contents[message_id].encode() not in on_disk


# -- disk failures --


class Full(datafile.Journal):
    """A journal whose appends fail as on a full disk while `full` is set."""

    full = False

    def append(self, data: bytes) -> None:
        if Full.full:
            raise OSError(28, os.strerror(28))
        super().append(data)


@ensureDeferred
async def test_a_deletion_that_cannot_be_written_fails_and_puts_them_back(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(Full, "full", False)
    store = DurableStore(str(tmp_path / "data.json"), reactor, open_journal=Full)
    store.load()
    store.start()
    try:
        ids = [await store.append("An", f"m{i}", T) for i in range(5)]
        told = []
        Full.full = True
        deleting = store.delete([ids[1], ids[4]], told.append)
        assert store.history.entry(ids[1]) is None  # out of `get` at once
        with pytest.raises(StoreError):
            await deleting
        assert told == []  # nobody was told of a deletion that did not happen
        assert [codec.decode(e)["id"] for e in store.history.entries] == ids
        Full.full = False
        assert await store.append("An", "next", T) == ids[-1] + 1
    finally:
        await store.close()
    again = DurableStore(str(tmp_path / "data.json"), reactor)
    again.load()
    assert len(again.history) == 6
    again._lock.release()


@ensureDeferred
async def test_a_purge_that_fails_is_retried_and_fires_once_done(tmp_path, monkeypatch):
    from chatbox.local import store as store_module

    monkeypatch.setattr(store_module, "FOLD_RETRY_SECONDS", 0.2)
    path = tmp_path / "data.json"
    store = DurableStore(str(path), reactor)
    store.load()
    store.start()
    real_write_array = datafile.write_array
    failures = []

    def disk_full(*args, **kwargs):
        failures.append(args[0])
        raise OSError(28, os.strerror(28))

    try:
        ids = [await store.append("An", f"secret-{i}", T) for i in range(5)]
        monkeypatch.setattr(datafile, "write_array", disk_full)
        told = []
        purged = store.delete([ids[2]], told.append)
        await until(lambda: len(failures) >= 2)  # tried, and tried again
        assert told == [[ids[2]]]  # durable: told at once
        assert not purged.called  # but its content is still on disk
        assert store.healthy  # sending still works meanwhile
        assert await store.append("An", "meanwhile", T) == ids[-1] + 1
        monkeypatch.setattr(datafile, "write_array", real_write_array)
        assert await purged == [ids[2]]
        on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
        assert b"secret-2" not in on_disk and b"secret-3" in on_disk
    finally:
        await store.close()


async def until(condition, timeout: float = 10.0) -> None:
    waited = 0.0
    while not condition():
        assert waited < timeout, "timed out"
        await deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


@ensureDeferred
async def test_a_deletion_during_a_failed_folds_back_off_is_still_purged(
    tmp_path, monkeypatch
):
    """A fold failed (no deletion waiting then), so folds back off; a
    deletion that comes meanwhile, with nothing written after it, is purged
    once the back-off is over."""
    from chatbox.local import store as store_module

    monkeypatch.setattr(store_module, "FOLD_RETRY_SECONDS", 0.3)
    store = DurableStore(str(tmp_path / "data.json"), reactor, fold_threshold=500)
    store.load()
    store.start()
    real_write_array = datafile.write_array
    failures = []

    def disk_full(*args, **kwargs):
        failures.append(args[0])
        raise OSError(28, os.strerror(28))

    try:
        monkeypatch.setattr(datafile, "write_array", disk_full)
        ids = [await store.append("An", f"secret-{i}", T) for i in range(20)]
        await until(lambda: failures)  # the journal was retired, its fold failed
        monkeypatch.setattr(datafile, "write_array", real_write_array)
        purged = store.delete([ids[4]], lambda ids: None)
        assert await purged.addTimeout(5, reactor) == [ids[4]]
        on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
        assert b"secret-4" not in on_disk and b"secret-5" in on_disk
    finally:
        await store.close()


@ensureDeferred
async def test_a_purge_retried_after_a_failure_folds_what_its_mark_follows(
    tmp_path, monkeypatch
):
    """The journal a purge started holds a mark; its fold fails, messages
    come, the retry succeeds: data.json must be the history the mark
    follows, not the newer one, or the next start-up reads damage."""
    from chatbox.local import store as store_module

    monkeypatch.setattr(store_module, "FOLD_RETRY_SECONDS", 0.2)
    folder = tmp_path / "live"
    folder.mkdir()
    store = DurableStore(str(folder / "data.json"), reactor)
    store.load()
    store.start()
    real_write_array = datafile.write_array
    failures = []

    def disk_full(*args, **kwargs):
        failures.append(args[0])
        raise OSError(28, os.strerror(28))

    try:
        ids = [await store.append("An", f"m{i}", T) for i in range(5)]
        monkeypatch.setattr(datafile, "write_array", disk_full)
        purged = store.delete([ids[-1]], lambda ids: None)  # a mark is due
        await until(lambda: failures)
        later = await store.append("An", "after the failure", T)
        monkeypatch.setattr(datafile, "write_array", real_write_array)
        await purged
        copy = tmp_path / "copy"
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.lock"))
    finally:
        await store.close()
    loaded = datafile.load(str(copy / "data.json"))  # as a kill -9 left it
    assert loaded.ids == [*ids[:-1], later] and loaded.high == later


def test_a_kill_at_any_step_of_a_start_up_that_finishes_a_fold(tmp_path, monkeypatch):
    """Start-up on what a crash in the middle of a purge left (the old
    journal beside a marked one), copied at every step and each copy
    started again."""
    folder = tmp_path / "live"
    folder.mkdir()
    path = folder / "data.json"
    history_file(path, 1, 2, 3)
    journal(path, line(4), line(5), line(6), deletion([6, 2], 6), old=True)
    journal(path, mark(5, 6), line(7), deletion([4], 7))
    steps = Steps(folder, monkeypatch)
    store = DurableStore(
        str(path),
        reactor,
        open_journal=lambda p: datafile.Journal(p, fsync=steps.fsync),
    )
    store.load()
    store._lock.release()
    store._journal.close()
    monkeypatch.undo()
    assert len(steps.copies) > 8
    for files, _ in steps.copies:
        where = tmp_path / "copy"
        if where.exists():
            shutil.rmtree(where)
        where.mkdir()
        for name, data in files.items():
            (where / name).write_bytes(data)
        loaded = datafile.load(str(where / "data.json"))
        assert loaded.ids == [1, 3, 5, 7] and loaded.high == 7
