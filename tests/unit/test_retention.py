"""Retention in one process's parts: chat/retention.py's parsing, cut and
timer; History's reads with the cut; LocalRoom's entries, import_entries
and expire, on real files."""

import os

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor

from chatbox.chat.room import Imported, RoomError
from chatbox.local import datafile
from chatbox.local.room import LocalRoom
from chatbox.local.store import DurableStore
from chatbox.wire import codec
from chatbox.wire.clock import Moment

T = Moment("24/11/2026, 14:05:09", 1795964709000)


def room_at(path, open_journal=datafile.Journal):
    store = DurableStore(str(path), reactor, open_journal=open_journal)
    store.load()
    room = LocalRoom(store, reactor.seconds)
    room.start()
    return room


def reloaded(path):
    store = DurableStore(str(path), reactor)
    store.load()
    store._lock.release()
    return [codec.decode(e) for e in store.history.entries], store.ids_used


def imported(i, content=None):
    return Imported(
        "Ïmported",
        content if content is not None else f"old 𝄞 {i}",
        "01/01/2020, 10:00:00",
        1577872800000 + i,
        "announcement" if i == 1 else None,
    )


# -- import_entries and entries --


@ensureDeferred
async def test_an_import_appends_with_new_ids_durably_and_tells_nobody(tmp_path):
    path = tmp_path / "data.json"
    room = room_at(path)
    told = []
    room.attach(lambda event, exclude: told.append(event), lambda lost: None)
    try:
        first = (await room.post(object(), "An", "before", T, send_id="s-1")).id
        ids = await room.import_entries([imported(i) for i in range(3)])
        assert ids == [first + 1, first + 2, first + 3]
        assert len(told) == 1  # the post's event only
        assert room.sends.kept()[0][1] == "s-1"  # send_ids untouched
        page = await room.entries(0, 10)
        assert [i for i, _ in page] == [first, *ids]
        assert codec.decode(page[2][1]) == {
            "id": ids[1],
            "name": "Ïmported",
            "content": "old 𝄞 1",
            "timestamp": "01/01/2020, 10:00:00",
            "time": 1577872800001,
            "announcement": True,
        }
        # Durable before acknowledged: in the journal now, without a close.
        on_disk, _ = reloaded_without_lock(path)
        assert [e["id"] for e in on_disk] == [first, *ids]
        assert (await room.post(object(), "An", "after", T)).id == ids[-1] + 1
    finally:
        await room.close()
    entries, used = reloaded(path)
    assert [e["content"] for e in entries][1:4] == [f"old 𝄞 {i}" for i in range(3)]
    assert used == ids[-1] + 1


def reloaded_without_lock(path):
    """What a restart after a kill -9 would read now (datafile.load takes no
    lock)."""
    loaded = datafile.load(str(path))
    return [codec.decode(e) for e in loaded.entries], loaded.high


@ensureDeferred
async def test_entries_pages_oldest_first_from_after(tmp_path):
    room = room_at(tmp_path / "data.json")
    try:
        ids = await room.import_entries([imported(i) for i in range(10)])
        assert [i for i, _ in await room.entries(0, 4)] == ids[:4]
        assert [i for i, _ in await room.entries(ids[3], 4)] == ids[4:8]
        assert [i for i, _ in await room.entries(ids[7], 4)] == ids[8:]
        assert await room.entries(ids[-1], 4) == []
        assert await room.entries(0, 0) == []
    finally:
        await room.close()


class FailingJournal(datafile.Journal):
    """Fails the `fail_at`-th append from now (a disk that fills mid-import)."""

    fail_at = 0

    def append(self, data: bytes) -> None:
        if FailingJournal.fail_at:
            FailingJournal.fail_at -= 1
            if not FailingJournal.fail_at:
                raise OSError(28, os.strerror(28))
        super().append(data)


@ensureDeferred
async def test_a_big_import_that_fails_midway_stores_none_of_it(tmp_path, monkeypatch):
    """An import bigger than one write goes down in several, each fsync'd;
    one failing cuts the journal back to before the first, and the ids go
    back, so the journal stays gapless."""
    path = tmp_path / "data.json"
    monkeypatch.setattr(FailingJournal, "fail_at", 0)
    room = room_at(path, FailingJournal)
    big = [imported(i, "😀" * 4000) for i in range(12)]  # ~190 KiB: 4 writes
    try:
        first = (await room.post(object(), "An", "before", T)).id
        FailingJournal.fail_at = 3
        with pytest.raises(RoomError):
            await room.import_entries(big)
        assert [i for i, _ in await room.entries(0, 100)] == [first]
        assert reloaded_without_lock(path) == (
            [codec.decode(room.store.history.entries[0])],
            first,
        )
        ids = await room.import_entries(big)
        assert ids == list(range(first + 1, first + 13))
        assert reloaded_without_lock(path)[1] == ids[-1]
    finally:
        await room.close()
    entries, _ = reloaded(path)
    assert [e["id"] for e in entries] == [first, *ids]


@ensureDeferred
async def test_an_import_of_a_wrong_shape_is_refused_whole(tmp_path):
    room = room_at(tmp_path / "data.json")
    try:
        with pytest.raises(RoomError):
            await room.import_entries([imported(0), Imported("An", 5, "x", None)])
        with pytest.raises(RoomError):
            await room.import_entries([imported(0)._replace(mark="admin")])
        assert await room.entries(0, 10) == []
        assert await room.import_entries([]) == []
    finally:
        await room.close()
