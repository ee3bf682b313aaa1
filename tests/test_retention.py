"""Retention on one process, at real size, over real sockets and files.

Histories are written as files (100,000 messages in the default room, each
with a content no other message holds: a token of 4-byte characters), so
an expired message is looked for byte for byte in every file under the
data folder once the purge is done. Expired and kept messages are days
apart, so the minutes a test takes never move the cut.
"""

import signal
import time
from pathlib import Path

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage

from chatbox import tap
from chatbox.chat.retention import DAY_MS
from chatbox.local import datafile
from chatbox.local.purge import LocalPurger
from tests.client import connect, until, user_at
from tests.held_twistd import HOLDING
from tests.http import fetch, metric
from tests.process import TWISTD, child_env, start
from tests.server import start_server
from tests.test_deletion_local import TOKEN, token

COUNT = 100_000
OLD = 60_000  # the oldest 60,000 of the default room are 40+ days old
NEWS, QUIET, FOREVER = 200_000, 300_000, 400_000  # token offsets per room


def now_ms() -> int:
    return int(time.time() * 1000)


def write_room(path: Path, times: list[int], offset: int = 0) -> None:
    """A history file as a long-running server leaves it: ids 1..n, message
    i holding token(offset + i). Written as text (json.dumps and strftime
    per message took 2.5 s for 100,000)."""
    minutes: dict[int, str] = {}
    rows = []
    for i, millis in enumerate(times, 1):
        minute, second = divmod(millis // 1000, 60)
        if minute not in minutes:
            minutes[minute] = time.strftime(
                "%d/%m/%Y, %H:%M", time.localtime(minute * 60)
            )
        rows.append(
            f'{{"id":{i},"name":"user{i % 97}","content":"message {i} '
            f'{token(offset + i)}","timestamp":"{minutes[minute]}:{second:02d}",'
            f'"time":{millis}}}'
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[\n" + ",\n".join(rows) + "\n]\n", encoding="utf-8")


def ages(old: int, recent: int, now: int) -> list[int]:
    """`old` messages 60 to 40 days old, then `recent` ones within 10 days."""
    return [now - 60 * DAY_MS + i * 1000 for i in range(old)] + [
        now - 10 * DAY_MS + i * 1000 for i in range(recent)
    ]


def tokens(folder: Path) -> set[bytes]:
    """Every message token in every file under `folder`."""
    found: set[bytes] = set()
    for p in folder.rglob("*"):
        if p.is_file():
            found.update(TOKEN.findall(p.read_bytes()))
    return found


def ids_of(entries: list[dict]) -> list[int]:
    return [m["id"] for m in entries]


# -- which rooms the purger enters --


@ensureDeferred
async def test_an_unloaded_room_is_entered_only_when_it_can_hold_something_expired(
    tmp_path,
):
    now = now_ms()
    data = tmp_path / "data.json"
    write_room(data, ages(5, 5, now))
    rooms = tmp_path / "data.rooms"
    write_room(rooms / "quiet.json", [now - 40 * DAY_MS] * 10 + [now - DAY_MS] * 5)
    write_room(rooms / "news.json", [now - DAY_MS] * 20)
    server = await start_server(
        data,
        "--rooms=news,quiet",
        "--room-idle=0.1",
        "--retention-days=30",
        "--room-retention=news:messages=5",
    )
    try:
        purge = server.service.getServiceNamed("purge")
        purge.stopService()  # the test runs each purge itself
        purger = purge.purger
        assert isinstance(purger, LocalPurger)
        rooms_of = server.factory.rooms

        async def unloaded():
            await until(lambda: rooms_of.loaded_count() == 1)

        assert await purge.run_now() == {"": 5, "quiet": 10, "news": 15}
        assert purger.visits == 3  # the default room, and each room once
        await unloaded()
        # Nothing can have expired since: no room is loaded for it.
        assert await purge.run_now() == {}
        assert purger.visits == 3 and rooms_of.loads == 2
        # 29 days on, quiet's newest five (a day old) expire: it is entered;
        # news, with a count limit only and nobody posting, is not.
        later = now + 29 * DAY_MS + 60_000
        assert await purger.purge(purge.policy, later) == {"": 5, "quiet": 5}
        assert purger.visits == 5 and rooms_of.loads == 3
        await unloaded()
        # Someone posts in news and leaves: its files changed, so it is
        # entered again, and one message more than five expires.
        writer = await user_at(server.url + "/news", "Writer")
        assert (await writer.say("one more"))["id"] == 21
        reply = await writer.get()
        assert ids_of(reply["data"]["message"]) == [17, 18, 19, 20, 21]
        writer.sendClose()
        await writer.wait_closed()
        await unloaded()
        assert await purge.run_now() == {"news": 1}
        assert purger.visits == 6
    finally:
        await server.stop()


# -- 100,000 messages under the real twistd --


def write_all(folder: Path, now: int) -> None:
    write_room(folder / "data.json", ages(OLD, COUNT - OLD, now))
    rooms = folder / "data.rooms"
    write_room(rooms / "news.json", ages(0, 2_000, now), NEWS)
    write_room(rooms / "quiet.json", ages(3_000, 0, now), QUIET)
    write_room(rooms / "forever.json", ages(100, 0, now), FOREVER)


RETENTION = [
    "--rooms=news,quiet,forever",
    "--retention-days=30",
    "--room-retention=news:messages=500",
    "--room-retention=quiet:days=1",
    "--room-retention=forever:forever",
]


def expired_tokens() -> set[bytes]:
    return {
        token(i).encode()
        for i in [
            *range(1, OLD + 1),
            *range(NEWS + 1, NEWS + 1_501),
            *range(QUIET + 1, QUIET + 3_001),
        ]
    }


def kept_tokens() -> set[bytes]:
    return {
        token(i).encode()
        for i in [
            *range(OLD + 1, COUNT + 1),
            *range(NEWS + 1_501, NEWS + 2_001),
            *range(FOREVER + 1, FOREVER + 101),
        ]
    }


@ensureDeferred
async def test_100000_messages_expire_from_get_at_once_and_from_every_file(
    tmp_path,
):
    write_all(tmp_path, now_ms())
    server = await start(tmp_path, *RETENTION, "--purge-interval=3600")
    try:
        # A v2 client, at once (the first purge is 5 s after start).
        marker = await user_at(server.url, "Marker")
        reader = await connect(server.url)
        await reader.register("Reader")
        reply = await reader.request({"type": "get"})
        assert len(reply["data"]["message"]) == 10_000  # the newest, all kept
        page = (await reader.get(before=OLD + 4))["data"]["message"]
        assert ids_of(page) == [OLD + 1, OLD + 2, OLD + 3]  # none older
        news = await user_at(server.url + "/news", "Reader")
        page = (await news.request({"type": "get"}))["data"]["message"]
        assert ids_of(page) == list(range(1_501, 2_001))
        assert not (await news.get(before=1_501))["data"]["message"]
        assert b"retention: purged" not in server.output
        assert expired_tokens() <= tokens(tmp_path)  # read-time only, so far

        # The purge: every room, visited or not, within the interval.
        started = time.perf_counter()
        await server.wait_for(rb"retention: purged 64500 expired messages", timeout=30)
        seconds = time.perf_counter() - started
        on_disk = tokens(tmp_path)
        assert not on_disk & expired_tokens(), "expired text left in a file"
        assert kept_tokens() <= on_disk
        assert b"Traceback" not in server.output
        # Nobody was told: the purge sends no `delete` event.
        await reader.no_event_before(marker)  # the marker is id COUNT + 1
        assert (await reader.say("after the purge"))["id"] == COUNT + 2
        print(f"\nfirst purge seen {seconds:.1f} s after waiting began")
    finally:
        await server.kill(signal.SIGTERM)
    assert server.stopped_cleanly, server.output.decode()[-2000:]

    # A restart: ids go on rising, in a room with nothing left too.
    again = await start(tmp_path, *RETENTION)
    try:
        quiet = await user_at(again.url + "/quiet", "Writer")
        assert (await quiet.request({"type": "get"}))["data"]["message"] == []
        assert (await quiet.say("first in a long while"))["id"] == 3_001
        reader = await user_at(again.url, "Reader")
        assert (await reader.say("after a restart"))["id"] == COUNT + 3
    finally:
        await again.kill(signal.SIGTERM)
    assert again.stopped_cleanly
    on_disk = tokens(tmp_path)
    assert not on_disk & expired_tokens()
    assert kept_tokens() <= on_disk


@ensureDeferred
async def test_kill_9_during_the_purge_loses_nothing_kept(tmp_path):
    """Journal writes held (tests/held_twistd.py) so each kill lands at a
    known step of the purge: before the default room's expiry record is
    written, 5 ms after it is let through (usually fsync'd, the fold under
    way), and once that room is done and the next room's record is held.
    Each start goes on from what the kill before left: every kept message
    stays, the files load without damage, and a later purge finishes."""
    kept, expired = kept_tokens(), expired_tokens()
    data = tmp_path / "data.json"
    journals = datafile.journal_paths(str(data))
    seen = []
    write_all(tmp_path, now_ms())
    # Each start goes on from the files the kill before it left.
    for step in ("held", "written", "next room"):
        server = await start(tmp_path, *RETENTION, "--purge-interval=1", held=True)
        await server.wait_for(HOLDING, timeout=30)
        if step != "held":
            server.transport.write(b"x")  # the expiry record goes down
        if step.startswith("written"):
            # Usually lands with the record fsync'd and the fold under way.
            await deferLater(reactor, 0.005, lambda: None)
        if step == "next room":
            await server.wait_for(HOLDING, count=2, timeout=30)
        await server.kill(signal.SIGKILL)
        on_disk = tokens(tmp_path)
        assert kept <= on_disk, f"a kept message lost, killed at {step}"
        loaded = datafile.load(str(data))  # no damage either
        assert loaded.high == COUNT
        left = len(on_disk & tokens_of(range(1, OLD + 1)))
        seen.append((step, left, recorded(journals), len(loaded.entries)))
    assert seen[0] == ("held", OLD, False, COUNT)  # nothing on disk yet
    assert seen[1][3] in (COUNT, COUNT - OLD)  # the record is down or not
    assert seen[-1] == ("next room", 0, False, COUNT - OLD)  # purged
    print(f"\nkilled at: {seen}")
    server = await start(tmp_path, *RETENTION, "--purge-interval=1")
    try:
        for _ in range(300):
            if await purged_once(server):
                break
            await deferLater(reactor, 0.1, lambda: None)
        reader = await user_at(server.url, "Reader")
        assert (await reader.say("after the kills"))["id"] == COUNT + 1
    finally:
        await server.kill(signal.SIGTERM)
    assert server.stopped_cleanly
    on_disk = tokens(tmp_path)
    assert not on_disk & expired
    assert kept <= on_disk


def recorded(journals) -> bool:
    """An expiry record is in a journal (current or retired)."""
    for path in journals:
        try:
            if b"expired_to" in Path(path).read_bytes():
                return True
        except FileNotFoundError:
            pass
    return False


def tokens_of(numbers) -> set[bytes]:
    return {token(i).encode() for i in numbers}


async def purged_once(server) -> bool:
    _, _, body = await fetch(server, "/metrics")
    return metric(body.decode(), "chatbox_retention_last_purge_timestamp_seconds") > 0


def refusal(*args: str):
    def said(result: tuple[bytes, bytes, int]) -> str:
        out, err, code = result
        assert code != 0
        return (out + err).decode()

    return getProcessOutputAndValue(
        TWISTD, ["-n", "--pidfile=", "chatbox", *args], env=child_env()
    ).addCallback(said)


@ensureDeferred
async def test_wrong_retention_options_are_one_clear_line(tmp_path):
    """One twistd run for what an operator sees; the rest of the slips are
    parsed in this process, as tap parses them."""
    data = f"--data={tmp_path / 'data.json'}"
    said = await refusal(data, "--room-retention=news:days=1,hours=2")
    # twistd prints the usage, then the error on its last line.
    last = said.strip().splitlines()[-1]
    assert last.endswith(
        ": --room-retention: 'news:days=1,hours=2': 'hours=2' is not "
        "days=N or messages=M"
    ), said
    assert "Traceback" not in said
    for args, says in [
        (["--retention-days=a week"], "'a week' is not a number (days)"),
        (["--retention-days=-1"], "must be 0 or more (days)"),
        (["--retention-messages=-1"], "must be 0 or more"),
        (["--room-retention=news"], "'news' is not ROOM:days=N,messages=M"),
        (["--room-retention=a:forever", "--room-retention=A:days=1"], "twice"),
        (["--retention-days=1", "--purge-interval=0.5"], "at least 1 second"),
        (["--retention-messages=1.5"], "'1.5' is not a whole number"),
        (["--room-retention=news:days=1"], "names rooms --rooms does not: news"),
        (
            ["--rooms=news", "--room-retention=nwes:days=1"],
            "names rooms --rooms does not: nwes",
        ),
    ]:
        with pytest.raises(usage.UsageError) as refused:
            tap.Options().parseOptions([data, *args])
        assert says in str(refused.value), (args, str(refused.value))
        assert "\n" not in str(refused.value)
    assert not (tmp_path / "data.json").exists()
