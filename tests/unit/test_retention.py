"""Retention in one process's parts: chat/retention.py's parsing, cut and
timer; History's reads with the cut; LocalRoom's entries, import_entries
and expire, on real files."""

import json
import os
import re
import zlib

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from chatbox.chat.retention import (
    DAY_MS,
    KEEP_ALL,
    PurgeService,
    Retention,
    RetentionPolicy,
    first_kept,
    parse_room_retention,
)
from chatbox.chat.room import Imported, RoomError
from chatbox.chat.roomnames import DEFAULT
from chatbox.local import datafile
from chatbox.local.history import History
from chatbox.local.purge import ROOM_WAIT_SECONDS, LocalPurger, PurgeIncomplete
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


# -- chat/retention.py: options --


def test_the_start_up_line_says_what_is_kept_where():
    rooms = ["news:messages=1000", "staff:forever"]
    policy = RetentionPolicy.from_options(365, 0, rooms)
    assert policy.describe() == (
        "the default room: kept for 365 days; other rooms: kept for 365 days; "
        "room news: only the newest 1000; room staff: kept forever"
    )
    policy = RetentionPolicy.from_options(0.5, 500, ["-:forever"])
    assert policy.describe() == (
        "the default room: kept forever; other rooms: kept for 0.5 days, "
        "only the newest 500"
    )


def test_room_retention_specs_parse():
    assert parse_room_retention("news:days=7,messages=500") == (
        "news",
        Retention(7.0, 500),
    )
    assert parse_room_retention("-:messages=10") == (DEFAULT, Retention(0.0, 10))
    assert parse_room_retention("Class-7A:forever") == ("class-7a", KEEP_ALL)
    assert parse_room_retention("log: days = 0.5") == ("log", Retention(0.5, 0))


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("news", "is not ROOM:days=N,messages=M"),
        ("news:", "is not ROOM:days=N,messages=M"),
        ("news:weeks=2", "is not days=N or messages=M"),
        ("news:days=1,days=2", "is not days=N or messages=M"),
        ("news:days=-1", "days must be 0 or more"),
        ("news:days=nan", "days must be 0 or more"),
        ("news:days=inf", "days must be 0 or more"),
        ("news:messages=1.5", "messages must be a whole number"),
        ("news:days=soon", "days must be a number"),
        ("../etc:days=1", "../etc"),
    ],
)
def test_a_wrong_room_retention_says_what_is_wrong(spec, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_room_retention(spec)


def test_a_room_named_twice_is_refused_and_a_room_replaces_the_default_wholly():
    with pytest.raises(ValueError, match="twice"):
        RetentionPolicy.from_options(0, 0, ["a:days=1", "A:messages=2"])
    policy = RetentionPolicy.from_options(30, 1000, ["news:days=7", "-:forever"])
    assert policy.for_room("news") == Retention(7.0, 0)  # no count limit there
    assert policy.for_room("other") == Retention(30.0, 1000)
    assert policy.for_room(DEFAULT) == KEEP_ALL
    assert not policy.keeps_all
    assert RetentionPolicy.from_options(0, 0, ["a:forever"]).keeps_all


def test_an_infinite_age_limit_keeps_everything_instead_of_failing_every_read():
    """`--retention-days inf` passes tap's check (a float at least 0)."""
    retention = Retention(float("inf"), 0)
    times = [0, 5, 10**12]
    assert first_kept(3, times.__getitem__, retention, 1795964709000) == 0


# -- chat/retention.py: the cut --

NOW = 1795964709000


def counted_times(times):
    calls = []

    def time_at(i):
        calls.append(i)
        return times[i]

    return time_at, calls


def linear_first_kept(times, retention, now_ms):
    """The definition, one entry at a time: the newest unbroken run of
    entries that are neither too many nor too old."""
    index = len(times)
    oldest = retention.oldest_kept_ms(now_ms)
    while index > 0:
        when = times[index - 1]
        too_old = oldest is not None and (when is None or when < oldest)
        too_many = retention.messages and len(times) - (index - 1) > retention.messages
        if too_old or too_many:
            break
        index -= 1
    return index


def test_first_kept_over_100k_entries_reads_a_few_of_them():
    times = [NOW - (100_000 - i) * 60_000 for i in range(100_000)]  # one a minute
    for retention in (
        Retention(days=30),  # 43,200 minutes: keeps 43,199 (one is exactly at it)
        Retention(messages=5_000),
        Retention(days=30, messages=50_000),
        Retention(days=30, messages=40_000),
        Retention(days=1000),
        Retention(days=0.0001),
        KEEP_ALL,
    ):
        time_at, calls = counted_times(times)
        found = first_kept(len(times), time_at, retention, NOW)
        assert found == linear_first_kept(times, retention, NOW), retention
        assert len(calls) <= 18, (retention, len(calls))
    time_at, calls = counted_times(times)
    assert first_kept(len(times), time_at, Retention(days=30), NOW) == 100_000 - 43_200
    assert first_kept(0, time_at, Retention(days=30, messages=5), NOW) == 0


def test_an_entry_without_a_time_counts_as_older_than_any_age_limit():
    times = [None, NOW - 10, None, NOW - 5, NOW - 1]
    assert first_kept(5, times.__getitem__, Retention(days=1), NOW) == 3
    # A count limit alone does not read times at all.
    time_at, calls = counted_times(times)
    assert first_kept(5, time_at, Retention(messages=4), NOW) == 1
    assert calls == []


# -- chat/retention.py: the timer --


class FakePurger:
    def __init__(self):
        self.calls = []
        self.pending = []
        self.answer = None  # a dict: answered at once, as a purge with nothing due

    def purge(self, policy, now_ms):
        self.calls.append(now_ms)
        if self.answer is not None:
            return succeed(dict(self.answer))
        waiting = Deferred()
        self.pending.append(waiting)
        return waiting


class FakeMetrics:
    def __init__(self):
        self.retention_purged = Counted()
        self.retention_failures = Counted()
        self.retention_last_purge = Counted()


class Counted:
    def __init__(self):
        self.value = 0

    def inc(self, by=1):
        self.value += by

    def set(self, value):
        self.value = value


def service(interval=300.0, policy=None):
    clock = Clock()
    clock.advance(1_000_000)
    purger = FakePurger()
    metrics = FakeMetrics()
    purge = PurgeService(
        purger,
        policy or RetentionPolicy(Retention(days=1)),
        clock,
        interval,
        metrics,
    )
    return clock, purger, metrics, purge


def test_the_first_purge_comes_soon_after_start_then_every_interval():
    clock, purger, metrics, purge = service()
    purge.startService()
    clock.advance(4.9)
    assert purger.calls == []
    clock.advance(0.1)
    assert purger.calls == [1_000_005_000]
    clock.advance(600)  # nothing new while one is running
    assert len(purger.calls) == 1
    purger.pending[0].callback({"a": 3, "b": 0})
    assert metrics.retention_purged.value == 3
    assert metrics.retention_last_purge.value == clock.seconds()
    clock.advance(299.9)
    assert len(purger.calls) == 1
    clock.advance(0.1)
    assert len(purger.calls) == 2


def test_a_purge_that_ends_at_once_keeps_the_timer_going():
    """The usual case once history is trimmed: nothing is due, the purger
    answers at once, and the next purge must still come an interval later
    (the timer once died here, after the first such purge)."""
    clock, purger, metrics, purge = service(interval=60)
    purger.answer = {}
    purge.startService()
    for interval in range(5):
        clock.advance(5 if interval == 0 else 60)
        assert len(purger.calls) == interval + 1
    assert metrics.retention_last_purge.value == clock.seconds()
    assert purge.run_now().result == {}
    purge.stopService()


def test_run_now_while_one_runs_shares_it():
    clock, purger, _, purge = service()
    purge.startService()
    first = purge.run_now()
    second = purge.run_now()
    assert len(purger.calls) == 1
    purger.pending[0].callback({"a": 2})
    assert first.result == second.result == {"a": 2}
    clock.advance(5)  # the timer's own purge is a new one
    assert len(purger.calls) == 2


def test_a_failed_purge_is_counted_and_tried_again(caplog):
    clock, purger, metrics, purge = service(interval=60)
    purge.startService()
    clock.advance(5)
    failure = PurgeIncomplete("1 room(s) not purged", {"b": 7})
    purger.pending[0].errback(failure)
    assert metrics.retention_failures.value == 1
    assert metrics.retention_purged.value == 7
    assert metrics.retention_last_purge.value == 0
    clock.advance(60)
    assert len(purger.calls) == 2
    purger.pending[1].callback({})
    assert metrics.retention_last_purge.value == clock.seconds()


def test_stop_waits_for_the_purge_in_flight_and_starts_no_other():
    clock, purger, _, purge = service()
    purge.startService()
    clock.advance(5)
    stopped = purge.stopService()
    assert not stopped.called
    purger.pending[0].callback({})
    assert stopped.called
    clock.advance(10_000)
    assert len(purger.calls) == 1
    assert purge.stopService() is None  # nothing in flight


def test_nothing_runs_when_nothing_expires():
    clock, purger, _, purge = service(policy=RetentionPolicy())
    purge.startService()
    clock.advance(10_000)
    assert purger.calls == []
    purge.stopService()


# -- History and LocalRoom: reads leave expired entries out at once --


def write_history(path, times, content=lambda i: f"m{i} 𝄞"):
    """data.json as a file, ids 1..n, entry i posted at times[i]."""
    rows = []
    for i, when in enumerate(times, 1):
        row = {
            "id": i,
            "name": "An",
            "content": content(i),
            "timestamp": "01/01/2026, 00:00:00",
        }
        if when is not None:
            row["time"] = when
        rows.append(json.dumps(row, ensure_ascii=False))
    path.write_text("[\n" + ",\n".join(rows) + "\n]\n", encoding="utf-8")


def page_ids(entries):
    return [codec.decode(e)["id"] for e in entries]


class Seconds:
    def __init__(self, now_ms):
        self.now = now_ms / 1000

    def __call__(self):
        return self.now


def retained_room(path, retention, now_ms=NOW):
    store = DurableStore(str(path), reactor)
    store.load()
    clock = Seconds(now_ms)
    room = LocalRoom(store, clock)
    room.retention = retention
    room.start()
    return room, clock


@ensureDeferred
async def test_page_and_entries_leave_out_expired_entries_with_every_bound(tmp_path):
    """Ten messages a day apart, the newest a day old; days=4.5 keeps the
    newest four (ids 7-10), and so does messages=4: before/after/limit and
    the byte bound never bring back an expired one."""
    path = tmp_path / "data.json"
    write_history(path, [NOW - (11 - i) * DAY_MS for i in range(1, 11)])
    for retention in (Retention(days=4.5), Retention(messages=4)):
        room, _ = retained_room(path, retention)
        try:
            page = await room.page(100, None, None)
            assert page_ids(page.entries) == [7, 8, 9, 10]
            assert page_ids((await room.page(100, 9, None)).entries) == [7, 8]
            assert page_ids((await room.page(100, None, 2)).entries) == [7, 8, 9, 10]
            assert page_ids((await room.page(100, 7, None)).entries) == []
            assert page_ids((await room.page(2, 9, 1)).entries) == [7, 8]
            # A byte bound big enough for everything still ends at the cut.
            everything = sum(map(len, room.store.history.entries))
            bounded = await room.page(100, None, None, everything)
            assert page_ids(bounded.entries) == [7, 8, 9, 10]
            assert [i for i, _ in await room.entries(0, 100)] == [7, 8, 9, 10]
            assert [i for i, _ in await room.entries(3, 2)] == [7, 8]
            assert [i for i, _ in await room.entries(8, 100)] == [9, 10]
            assert room.message_count() == 10  # nothing purged yet
        finally:
            await room.close()


@ensureDeferred
async def test_expired_entries_leave_page_as_the_clock_moves_without_a_purge(
    tmp_path,
):
    path = tmp_path / "data.json"
    write_history(path, [NOW - 3 * DAY_MS, NOW - 2 * DAY_MS, NOW - DAY_MS])
    room, clock = retained_room(path, Retention(days=2.5))
    try:
        assert page_ids((await room.page(10, None, None)).entries) == [2, 3]
        clock.now += DAY_MS / 1000
        assert page_ids((await room.page(10, None, None)).entries) == [3]
        clock.now += DAY_MS / 1000
        assert (await room.page(10, None, None)).entries == []
        assert await room.entries(0, 10) == []
        posted = await room.post(
            object(), "An", "new", Moment("x", int(clock.now * 1000))
        )
        assert page_ids((await room.page(10, None, None)).entries) == [posted.id]
    finally:
        await room.close()


def test_history_first_kept_decodes_only_what_it_probes(monkeypatch):
    history = History()
    for i in range(1, 100_001):
        history.append(i, b'{"id":%d,"time":%d}' % (i, NOW - (100_001 - i) * 1000))
    decoded = []
    real = codec.decode
    monkeypatch.setattr(
        "chatbox.local.history.codec.decode", lambda b: decoded.append(b) or real(b)
    )
    assert (
        history.first_kept(Retention(days=0.5), NOW) == 56_800
    )  # ids 56,801 on: at most 12 h old
    assert len(decoded) <= 18
    assert history.first_kept(KEEP_ALL, NOW) == 0


# -- LocalRoom.expire: out of every file, ids never reused --


class Recording(datafile.Journal):
    """A journal that keeps a copy of every write (to see the records)."""

    writes: list[bytes] = []

    def append(self, data: bytes) -> None:
        Recording.writes.append(data)
        super().append(data)


def files_bytes(folder):
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


@ensureDeferred
async def test_expire_removes_the_prefix_from_every_file_in_one_short_record(
    tmp_path, monkeypatch
):
    path = tmp_path / "data.json"
    count = 10_000
    write_history(
        path,
        [NOW - (count - i) * 60_000 for i in range(count)],
        content=lambda i: f"secret-{i:05d}-😀",
    )
    monkeypatch.setattr(Recording, "writes", [])
    store = DurableStore(str(path), reactor, open_journal=Recording)
    store.load()
    room = LocalRoom(store, Seconds(NOW))
    room.retention = Retention(messages=1_000)
    told = []
    room.attach(lambda event, exclude: told.append(event), lambda lost: None)
    room.start()
    try:
        posted = await room.post(object(), "An", "kept-new", T)  # id 10,001
        assert room.due(NOW)
        assert await room.expire(NOW) == 9_001
        assert not room.due(NOW)
        assert told[1:] == []  # the post's own event only: nobody is told
        records = [w for w in Recording.writes if b"expired_to" in w]
        assert len(records) == 1 and len(records[0]) < 100, records
        assert b'"expired_to":9001' in records[0]
        assert room.message_count() == 1_000
        assert [i for i, _ in await room.entries(0, 1)] == [9_002]
        on_disk = files_bytes(tmp_path)
        assert "secret-09001-😀".encode() not in on_disk
        assert "secret-00001-😀".encode() not in on_disk
        assert "secret-09002-😀".encode() in on_disk
        assert not os.path.exists(datafile.journal_paths(str(path))[1])
        assert await room.expire(NOW) == 0  # nothing more
    finally:
        await room.close()
    entries, used = reloaded(path)
    assert [e["id"] for e in entries] == list(range(9_002, 10_002))
    assert used == posted.id


@ensureDeferred
async def test_what_expired_stays_expired_when_newer_messages_are_deleted(tmp_path):
    """Under a count limit a spammer's flood pushes the class's messages
    out; the operator then deletes the flood. What had expired must not come
    back before the purge (the attacker review saw it return)."""
    path = tmp_path / "data.json"
    write_history(path, [NOW - (10 - i) * 60_000 for i in range(10)])
    room, _ = retained_room(path, Retention(messages=4))
    try:
        page = await room.page(100, None, None, 0)
        assert page_ids(page.entries) == [7, 8, 9, 10]
        await room.delete([8, 9, 10], T)
        page = await room.page(100, None, None, 0)
        assert page_ids(page.entries) == [7]
        assert [i for i, _ in await room.entries(0, 100)] == [7]
        assert await room.expire(NOW) == 0  # the deletion purged them already
        assert page_ids((await room.page(100, None, None, 0)).entries) == [7]
    finally:
        await room.close()
    # And a restart (before any purge of its own) keeps them gone.
    room, _ = retained_room(path, Retention(messages=4))
    try:
        assert page_ids((await room.page(100, None, None, 0)).entries) == [7]
    finally:
        await room.close()


@ensureDeferred
async def test_a_flood_deleted_before_anyone_read_does_not_bring_back_the_cut(
    tmp_path,
):
    """The re-check review: nobody ran a get between the flood and its
    deletion, so no read had noted the cut; the deletion must."""
    path = tmp_path / "data.json"
    write_history(path, [NOW - (10 - i) * 60_000 for i in range(5)])
    room, _ = retained_room(path, Retention(messages=5))
    try:
        for i in range(5):
            await room.post(object(), "Spam", f"flood {i}", T)
        await room.delete([6, 7, 8, 9, 10], T)
        assert page_ids((await room.page(100, None, None, 0)).entries) == []
    finally:
        await room.close()
    room, _ = retained_room(path, Retention(messages=5))
    try:
        assert page_ids((await room.page(100, None, None, 0)).entries) == []
    finally:
        await room.close()


@ensureDeferred
async def test_expiring_everything_keeps_the_ids_from_coming_back(tmp_path):
    path = tmp_path / "data.json"
    write_history(path, [NOW - 10 * DAY_MS] * 5)
    room, _ = retained_room(path, Retention(days=1))
    try:
        assert await room.expire(NOW) == 5
        assert room.message_count() == 0 and room.oldest_kept_time() is None
    finally:
        await room.close()
    # A kill -9 now (no clean stop) or a clean stop: ids go on from 6.
    entries, used = reloaded(path)
    assert entries == [] and used == 5
    room, _ = retained_room(path, Retention(days=1))
    try:
        assert (await room.post(object(), "An", "next", T)).id == 6
    finally:
        await room.close()


def test_an_expiry_record_replays_and_replay_stays_strict(tmp_path):
    path = tmp_path / "data.json"
    write_history(path, [NOW] * 5)
    current = datafile.journal_paths(str(path))[0]

    def journal(*records):
        with open(current, "wb") as f:
            f.write(b"".join(records))

    def body(value):
        raw = json.dumps(value, separators=(",", ":")).encode()
        return b"%08x %s\n" % (zlib.crc32(raw), raw)

    message = {"name": "An", "content": "six", "timestamp": "01/01/2026, 00:00:00"}
    # A crash after the expiry was written, before its purge.
    journal(body({"expired_to": 3, "last": 5}), body({"id": 6, **message}))
    loaded = datafile.load(str(path))
    assert [codec.decode(e)["id"] for e in loaded.entries] == [4, 5, 6]
    assert loaded.high == 6
    # A message after it must still follow its `last`.
    journal(body({"expired_to": 3, "last": 5}), body({"id": 7, **message}))
    with pytest.raises(datafile.HistoryFileError, match="id 7 where id 6 must"):
        datafile.load(str(path))
    # An expiry that claims more ids than were handed out, or none.
    for bad in ({"expired_to": 6, "last": 5}, {"expired_to": 0, "last": 5}):
        journal(body(bad))
        with pytest.raises(datafile.HistoryFileError, match="expired_to"):
            datafile.load(str(path))
    # One that follows a record it does not match.
    journal(body({"id": 6, **message}), body({"expired_to": 3, "last": 5}))
    with pytest.raises(datafile.HistoryFileError, match="an expiry made when"):
        datafile.load(str(path))


@ensureDeferred
async def test_torn_writes_go_once_everything_stored_before_them_expired(tmp_path):
    path = tmp_path / "data.json"
    write_history(path, [NOW - 10 * DAY_MS, NOW - 3 * DAY_MS, NOW - DAY_MS])
    old = tmp_path / "data.json.torn-20260101T000000Z"
    newer = tmp_path / "data.json.torn-20260102T000000Z"
    for torn, when in ((old, NOW - 5 * DAY_MS), (newer, NOW - 2 * DAY_MS)):
        torn.write_bytes('{"id":9,"name":"An","content":"torn 😀'.encode())
        os.utime(torn, ns=(when * 1_000_000, when * 1_000_000))
    room, _ = retained_room(path, Retention(days=4))
    try:
        assert room.due(NOW)
        assert await room.expire(NOW) == 1
        assert not old.exists()  # older than the oldest kept (3 days)
        assert newer.exists()  # the 3-day-old message was stored before it
        assert not room.due(NOW)
    finally:
        await room.close()
    room, _ = retained_room(path, Retention(days=1.5))
    try:
        assert await room.expire(NOW) == 1
        assert not newer.exists()
    finally:
        await room.close()


# -- LocalPurger: a room whose purge cannot finish --


class StuckRoom:
    """A loaded room whose purge waits (a store retrying a full disk)."""

    def __init__(self):
        self.expiring = Deferred()

    def due(self, now_ms):
        return True

    def expire(self, now_ms):
        return self.expiring

    def oldest_kept_time(self):
        return None


class FakeRooms:
    def __init__(self, rooms):
        self.rooms = rooms
        self.inside = 0

    def every_room(self):
        return list(self.rooms)

    def loaded(self):
        return list(self.rooms.items())

    def enter(self, name):
        self.inside += 1
        return succeed(self.rooms[name])

    def leave(self, name):
        self.inside -= 1


def test_a_room_whose_purge_cannot_finish_holds_up_neither_the_walk_nor_shutdown():
    clock = Clock()
    stuck, other = StuckRoom(), StuckRoom()
    other.expiring = succeed(4)
    rooms = FakeRooms({"a": stuck, DEFAULT: other})  # walked in this order
    purger = LocalPurger(rooms, clock)
    policy = RetentionPolicy(Retention(days=1))
    first = purger.purge(policy, NOW)
    assert not first.called
    clock.advance(ROOM_WAIT_SECONDS)
    failure = getattr(first, "result", None)
    assert isinstance(failure.value, PurgeIncomplete), failure
    assert failure.value.removed == {DEFAULT: 4}  # the walk went on
    first.addErrback(lambda _: None)
    assert rooms.inside == 0
    # At shutdown, a purge waiting for a room gives up at once.
    stuck.expiring = Deferred()
    second = purger.purge(policy, NOW)
    purger._stop()
    assert isinstance(second.result.value, PurgeIncomplete)
    second.addErrback(lambda _: None)
    assert rooms.inside == 0 and clock.getDelayedCalls() == []
    # The store's purge finishing later changes nothing.
    stuck.expiring.callback(7)


@ensureDeferred
async def test_a_crash_after_the_fold_before_the_old_journal_went_loads_the_kept(
    tmp_path, monkeypatch
):
    """data.json already rewritten without the expired, the retired journal
    (with messages and the expiry record) still there: replay takes the
    kept ones from data.json and finds no damage."""
    path = tmp_path / "data.json"
    write_history(path, [NOW - 10 * DAY_MS] * 5 + [NOW] * 3)
    room, _ = retained_room(path, Retention(days=1))
    real = datafile.remove_durably
    crashed = []

    def crash_at_old_journal(file, **kwargs):
        if file.endswith(".journal.old") and not crashed:
            with open(file, "rb") as retired:
                assert b'"expired_to":5' in retired.read()
            crashed.append(datafile.load(str(path)))  # what a restart reads now
        return real(file, **kwargs)

    monkeypatch.setattr(datafile, "remove_durably", crash_at_old_journal)
    try:
        await room.post(object(), "An", "new", Moment("x", NOW))  # id 9
        assert await room.expire(NOW) == 5
    finally:
        await room.close()
    assert os.path.exists(datafile.journal_paths(str(path))[1]) is False
    (loaded,) = crashed
    assert [codec.decode(e)["id"] for e in loaded.entries] == [6, 7, 8, 9]
    assert loaded.high == 9
