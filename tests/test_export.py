"""Export and import of history (issue 16) against the real chatbox
service and its admin listener, with `chatbox-admin` run as a child as an
operator types it. Histories of 10k+ messages are written as files before
the server starts.

The server runs in this process (tests/server.py) so a test can count the
pages its rooms are asked for: that is how a reader that stops reading is
shown to stop the reads (memory bounded), not by timing anything."""

import datetime
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest_twisted
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from chatbox.admin import api
from tests import process
from tests.history_ops import (
    GOTHIC,
    START_MS,
    TOKEN,
    admin_args,
    cli,
    cli_env,
    entry,
    exported,
    lines_of,
    messages,
    without_ids,
    write_history,
)
from tests.history_ops import api as admin_request
from tests.server import start_server

DEFAULT_COUNT = 12_000
MATHS_COUNT = 3_000


class Served:
    """The in-process server, its admin URL, and its rooms' page reads."""

    def __init__(self, server: Any) -> None:
        self.server = server
        admin = server.service.getServiceNamed("admin")
        self.admin = f"http://127.0.0.1:{admin.port.getHost().port}"
        self.admin_port = admin.port.getHost().port
        self.reads = 0

    @property
    def rooms(self) -> Any:
        return self.server.service.getServiceNamed("chat").moderator.rooms

    def count_reads(self, room: Any) -> None:
        """Count `entries` calls on this room object (a loaded room)."""
        original = room.entries

        def counted(after: int, limit: int) -> Deferred:
            self.reads += 1
            return original(after, limit)

        room.entries = counted


async def serve(workdir: Path) -> Served:
    server = await start_server(
        workdir / "data.json", "--rooms=open", *admin_args(workdir)
    )
    return Served(server)


def build(workdir: Path) -> None:
    marked = messages(DEFAULT_COUNT, ["alice", "bob", GOTHIC, "Zoë"])
    marked[10]["announcement"] = True
    marked[11]["verified"] = True
    marked[12]["content"] = "𠜎" * 4000  # the longest message, 4 bytes a character
    write_history(workdir / "data.json", marked)
    write_history(
        workdir / "data.rooms" / "maths.json", messages(MATHS_COUNT, ["carol", "alice"])
    )


@pytest_twisted.async_yield_fixture
async def served(tmp_path):
    build(tmp_path)
    running = await serve(tmp_path)
    yield running
    await running.server.stop()


@ensureDeferred
async def test_every_room_then_each_filter(served, tmp_path):
    out = tmp_path / "all.jsonl"
    done = await cli(served.admin, "export", "-o", str(out))
    assert done.returncode == 0, done.stderr
    lines = lines_of(out)
    assert len(lines) == DEFAULT_COUNT + MATHS_COUNT
    # The default room first, ids rising, each line the stored entry with
    # its room first.
    assert [line["room"] for line in lines[:1]] == [""] and lines[-1]["room"] == "maths"
    assert out.read_bytes().startswith(b'{"room":"","id":1,"name":"alice","content"')
    assert [line["id"] for line in lines[:DEFAULT_COUNT]] == list(
        range(1, DEFAULT_COUNT + 1)
    )
    assert lines[10]["announcement"] is True and lines[11]["verified"] is True
    assert lines[12]["content"] == "𠜎" * 4000 and lines[2]["name"] == GOTHIC
    assert not (tmp_path / "all.jsonl.part").exists()

    async def count(*args: str) -> int:
        result = await cli(served.admin, "export", *args)
        assert result.returncode == 0, result.stderr
        return len(result.stdout.splitlines())

    assert await count("--room", "/maths") == MATHS_COUNT
    # --json adds nothing after an export on stdout.
    result = await cli(served.admin, "--json", "export", "--room", "/maths")
    assert [json.loads(line)["room"] for line in result.stdout.splitlines()] == [
        "maths"
    ] * MATHS_COUNT
    assert len(await exported(served.admin, "?room=")) == DEFAULT_COUNT
    # The same person by ARNS: a Cyrillic а in "alice" is alice.
    both = DEFAULT_COUNT // 4 + MATHS_COUNT // 2
    assert len(await exported(served.admin, "?nickname=%D0%B0lice")) == both
    gothic = await exported(served.admin, f"?room=&nickname={quote(GOTHIC)}")
    assert len(gothic) == DEFAULT_COUNT // 4
    # Inclusive at both ends, in epoch ms or ISO 8601.
    ten_seconds = f"?since={START_MS + 5000}&until={START_MS + 14_000}"
    assert len(await exported(served.admin, ten_seconds)) == 20
    assert (
        await count(
            "--since", "2026-05-28T20:26:45Z", "--until", "2026-05-28T20:26:54Z"
        )
        == 20
    )

    refused = await cli(served.admin, "export", "--room", "nosuch")
    assert refused.returncode == 1 and b"(404)" in refused.stderr and not refused.stdout
    refused = await cli(served.admin, "export", "--nickname", "x" * 101)
    assert refused.returncode == 1 and b"(400)" in refused.stderr
    refused = await cli(served.admin, "export", "--since", "2000", "--until", "1000")
    assert refused.returncode == 2 and b"--since is after --until" in refused.stderr
    assert not served.rooms.is_new("maths") and served.rooms.is_new("nosuch")


async def _raw_export(port: int, query: str = "") -> socket.socket:
    sock = socket.socket()
    # A small window before connecting: what the kernel holds for a reader
    # that does not read stays far below the whole export.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /v1/export{query} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    return sock


async def _loaded(served: Served, name: str) -> Any:
    room = await served.rooms.enter(name)
    served.rooms.leave(name)
    return room


def small_send_buffers(monkeypatch) -> None:
    """The admin port's sockets with a kernel send buffer of 16 KiB, so
    what the kernel holds for a reader that does not read is far below
    the export (loopback would otherwise take megabytes)."""
    original = api.AdminChannel.connectionMade

    def made(channel: api.AdminChannel) -> None:
        channel.transport.getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024
        )
        original(channel)

    monkeypatch.setattr(api.AdminChannel, "connectionMade", made)


@ensureDeferred
async def test_a_reader_that_stops_stops_the_reads(served, monkeypatch):
    """Memory is one page per export: a client that reads nothing has the
    server read a few pages (what the socket buffers hold), not 30; one that
    leaves ends the export and the room is let go."""
    small_send_buffers(monkeypatch)
    served.count_reads(await _loaded(served, ""))
    sock = await _raw_export(served.admin_port, "?room=")
    await deferLater(reactor, 0.5, lambda: None)
    held = served.reads
    assert 1 <= held <= 8, held  # 24 pages in all
    await deferLater(reactor, 0.3, lambda: None)
    assert served.reads == held  # paused, not creeping on
    # Reading on resumes it to the end.
    sock.setblocking(False)
    received = bytearray()
    deadline = time.monotonic() + 20
    while not received.endswith(b"\r\n0\r\n\r\n") and time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            await deferLater(reactor, 0.001, lambda: None)
            continue
        received += chunk
    sock.close()
    assert received.count(b'{"room":""') == DEFAULT_COUNT
    assert served.reads == DEFAULT_COUNT // 500 + 1

    served.reads = 0
    sock = await _raw_export(served.admin_port)
    await deferLater(reactor, 0.3, lambda: None)
    sock.close()  # gone mid-way
    await deferLater(reactor, 0.2, lambda: None)
    stopped = served.reads
    assert stopped < 10
    await deferLater(reactor, 0.3, lambda: None)
    assert served.reads == stopped
    slots = served.rooms._slots
    assert slots[""].users == 0 or all(s.users == 0 for n, s in slots.items() if n)


@ensureDeferred
async def test_a_flowing_export_outlives_the_request_deadline(served, monkeypatch):
    """The admin port gives a request REQUEST_DEADLINE to arrive; an export
    still flowing long after it is not cut. One whose reader stalls for
    STALL_DEADLINE is."""
    monkeypatch.setattr(api, "REQUEST_DEADLINE", 0.2)
    small_send_buffers(monkeypatch)
    monkeypatch.setattr(api, "STALL_DEADLINE", 0.5)
    sock = await _raw_export(served.admin_port, "?room=")
    sock.setblocking(False)
    received = bytearray()
    started = time.monotonic()
    while time.monotonic() - started < 20:
        try:
            chunk = sock.recv(32 * 1024)  # slowly: ~1.5 s in all
        except BlockingIOError:
            chunk = None
        if chunk == b"":
            break
        if chunk:
            received += chunk
        await deferLater(reactor, 0.005, lambda: None)
    sock.close()
    # Longer than both deadlines, and whole.
    assert time.monotonic() - started > 0.7
    assert received.endswith(b"\r\n0\r\n\r\n")
    assert received.count(b'{"room":""') == DEFAULT_COUNT
    assert received.count(b"HTTP/1.1 ") == 1  # no 408 slipped in

    monkeypatch.setattr(api, "STALL_DEADLINE", 0.3)
    sock = await _raw_export(served.admin_port)
    await deferLater(reactor, 1.0, lambda: None)
    sock.setblocking(False)
    got = bytearray()
    with_end = False
    for _ in range(400):
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            await deferLater(reactor, 0.001, lambda: None)
            continue
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            with_end = True
            break
        got += chunk
    sock.close()
    assert with_end and not got.endswith(b"\r\n0\r\n\r\n")  # cut, not finished
    assert all(s.users == 0 for n, s in served.rooms._slots.items() if n)


@ensureDeferred
async def test_an_export_while_people_send(served):
    """Everything acknowledged before the export began is in it, while
    clients keep sending; the rate is printed (bench figures, no assert)."""
    server = served.server
    senders = [await server.user(f"sender{i}") for i in range(4)]
    acked: list[tuple[float, str]] = []
    running = True

    async def send(client: Any, who: int) -> None:
        n = 0
        while running:
            n += 1
            text = f"load {who} {n}"
            reply = await client.say(text)
            assert reply["status"] is True, reply
            acked.append((time.monotonic(), text))

    loops = [Deferred.fromCoroutine(send(c, i)) for i, c in enumerate(senders)]
    await deferLater(reactor, 0.3, lambda: None)
    began = time.monotonic()
    before = {text for when, text in acked if when < began}
    result = await cli(served.admin, "export", "--room", "/")
    took = time.monotonic() - began
    running = False
    for loop in loops:
        await loop
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    exported = {line["content"] for line in lines}
    assert before <= exported and len(before) > 10
    ids = [line["id"] for line in lines]
    assert ids == sorted(set(ids))
    print(
        f"\nexport under load: {len(lines)} lines in {took:.2f} s "
        f"({len(lines) / took:,.0f} lines/s, CLI start included) while "
        f"{len(acked)} messages were sent"
    )
    for client in senders:
        client.abort()


# -- import --


@ensureDeferred
async def test_round_trip_into_another_server(served, tmp_path):
    """export -> import into a fresh server (and into another room) ->
    export is the same, ids aside."""
    first = tmp_path / "first.jsonl"
    assert (await cli(served.admin, "export", "-o", str(first))).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    target = await serve(other)
    try:
        done = await cli(target.admin, "import", str(first))
        assert done.returncode == 0, done.stderr
        assert b"imported 15000 messages" in done.stderr
        again = await exported(target.admin)
        assert without_ids(again) == without_ids(lines_of(first))
        # Into one room whatever the lines say.
        maths = tmp_path / "maths.jsonl"
        done = await cli(served.admin, "export", "--room", "maths", "-o", str(maths))
        assert done.returncode == 0, done.stderr
        done = await cli(target.admin, "import", str(maths), "--room", "/physics")
        assert done.returncode == 0, done.stderr
        # The same again would put old messages after newer ones: refused
        # (retention's cut needs time order), nothing of it stored.
        done = await cli(target.admin, "import", str(maths), "--room", "physics")
        assert done.returncode == 1 and b"time order" in done.stderr
        moved = await exported(target.admin, "?room=physics")
        assert [m["id"] for m in moved] == list(range(1, MATHS_COUNT + 1))
        assert without_ids(moved) == [
            {**line, "room": "physics"} for line in without_ids(lines_of(maths))
        ]
    finally:
        await target.server.stop()


FIRST_V2 = datetime.datetime(2019, 2, 1, 10, 0, 0)


def v2_file(path: Path, count: int) -> None:
    """A v2 data.json (no ids, no `time`): 4 KB a message."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("[")
        for i in range(count):
            # A minute apart, in order, as a v2 server wrote them.
            stamp = (FIRST_V2 + datetime.timedelta(minutes=i)).strftime(
                "%d/%m/%Y, %H:%M:%S"
            )
            item = {
                "name": f"user{i % 50}",
                "content": f"{i} " + "ж" * 2000,
                "timestamp": stamp,
            }
            f.write(("\n" if i else "") + json.dumps(item, ensure_ascii=False))
            f.write("," if i < count - 1 else "\n]\n")


async def peak_import(admin: str, path: Path, room: str) -> int:
    """The CLI's peak memory (KiB) importing `path`."""
    measured = await deferToThread(
        subprocess.run,
        [
            sys.executable,
            "-c",
            "import resource, subprocess, sys;"
            "r = subprocess.run(sys.argv[1:]);"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);"
            "sys.exit(r.returncode)",
            *[sys.executable, "-m", "chatbox.admin.cli", "--url", admin],
            *["import", str(path), "--room", room],
        ],
        capture_output=True,
        env=cli_env(None),
        cwd=process.REPOSITORY,
        timeout=120,
    )
    assert measured.returncode == 0, measured.stderr
    return int(measured.stdout.split()[-1])


@ensureDeferred
async def test_a_v2_data_json_is_read_piece_by_piece(tmp_path):
    """A v2 data.json of 12 MB is imported whole, with the CLI's memory
    what it is for a file of 40 messages: it does not grow with the file."""
    workdir = tmp_path / "server"
    workdir.mkdir()
    target = await serve(workdir)
    small, big = tmp_path / "small.json", tmp_path / "v2.json"
    count = 3_000
    v2_file(small, 40)
    v2_file(big, count)
    assert big.stat().st_size > 12_000_000
    try:
        baseline = await peak_import(target.admin, small, "small")
        peak = await peak_import(target.admin, big, "old")
        print(
            f"\nimport CLI peak: {baseline} KiB for 40 messages, {peak} KiB for 12 MB"
        )
        assert peak - baseline < 12_000, (baseline, peak)
        lines = await exported(target.admin, "?room=old")
        assert len(lines) == count
        assert lines[-1]["content"].startswith(f"{count - 1} ")
        assert lines[0]["timestamp"] == "01/02/2019, 10:00:00" and "time" in lines[0]
    finally:
        await target.server.stop()


@ensureDeferred
async def test_bad_lines_are_named_and_a_refused_batch_stores_nothing(served, tmp_path):
    good = [
        json.dumps({"room": "late", **entry(i, "ann", f"fine {i}", START_MS + i)})
        for i in range(1, 3001)
    ]

    async def attempt(lines: list[str], *args: str) -> Any:
        path = tmp_path / "in.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return await cli(served.admin, "import", str(path), *args)

    async def stored() -> int:
        if served.rooms.is_new("late"):
            return 0  # never made: nothing was imported into it
        return len(await exported(served.admin, "?room=late"))

    # The server's own rules (no such nickname), named by the file's line.
    bad_name = json.loads(good[6])
    bad_name["name"] = "n" * 101
    refused = await attempt([*good[:6], json.dumps(bad_name), *good[7:9]])
    assert refused.returncode == 1
    assert b"line 7: name is not a nickname" in refused.stderr, refused.stderr
    assert await stored() == 0 and b"--skip" not in refused.stderr

    # What the CLI refuses itself (tests/unit/test_admin_history.py has
    # the rest): nothing is sent.
    for broken, said in (
        ('{"room": "late", "name": "ann", ', b"line 4: not JSON"),
        (
            '{"room":"late","name":"a","content":"' + "x" * 1_100_000 + '"}',
            b"line 4: longer than",
        ),
    ):
        refused = await attempt([*good[:3], broken, *good[4:6]])
        assert refused.returncode == 1 and said in refused.stderr, (
            said,
            refused.stderr,
        )
        assert await stored() == 0
    # The server's: content over 4,000 characters, a time that is none.
    for broken, said in (
        (
            json.dumps({"room": "late", **entry(1, "ann", "x" * 4001, START_MS)}),
            b"line 4: content",
        ),
        (json.dumps({"room": "late", **entry(1, "ann", "a", -5)}), b"line 4: time"),
    ):
        refused = await attempt([*good[:3], broken, *good[4:6]])
        assert refused.returncode == 1 and said in refused.stderr, (
            said,
            refused.stderr,
        )
        assert await stored() == 0

    # Past the first batches: those are stored, and the CLI says how to go on.
    refused = await attempt([*good[:2500], json.dumps(bad_name), *good[2500:]])
    assert refused.returncode == 1 and b"line 2501: name" in refused.stderr
    skip = int(re.search(rb"--skip (\d+)", refused.stderr).group(1))
    assert 0 < skip <= 2500 and await stored() == skip
    resumed = await attempt(good, "--skip", str(skip))
    assert resumed.returncode == 0, resumed.stderr
    contents = [line["content"] for line in await exported(served.admin, "?room=late")]
    assert contents == [f"fine {i}" for i in range(1, 3001)]


@ensureDeferred
async def test_unread_exports_cannot_lock_the_operator_out(served, monkeypatch):
    """A stuck script's exports: past MAX_STREAMS the next one is 429, and
    the connections left let the operator act (the attacker review filled
    all 64 admin connections with unread exports, and a ban got 503)."""
    monkeypatch.setattr(api, "MAX_STREAMS", 3)
    room = await _loaded(served, "maths")
    held: list[Deferred] = []
    original = room.entries

    def stuck(after: int, limit: int) -> Deferred:
        held.append(Deferred())  # a reader that never takes the next page
        return held[-1]

    room.entries = stuck
    try:
        export = "/v1/export?room=maths"
        streams = [
            Deferred.fromCoroutine(admin_request(served.admin, "GET", export))
            for _ in range(3)
        ]
        for _ in range(200):
            if len(held) == 3:
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert len(held) == 3
        code, body = await admin_request(served.admin, "GET", export)
        assert code == 429 and b"exports or backups are running" in body
        assert (await admin_request(served.admin, "GET", "/v1/users"))[0] == 200
        for waiting in held:
            waiting.callback([])
        assert [code for code, _ in [await s for s in streams]] == [200] * 3
    finally:
        room.entries = original
    # Their places are back.
    assert len(await exported(served.admin, "?room=maths")) == MATHS_COUNT


@ensureDeferred
async def test_an_import_keeps_a_room_in_time_order(served, tmp_path):
    """Retention's cut is a binary search over times, so an import may not
    put old messages after newer ones (beyond a day's slack for clocks and
    time zones), nor date one in the future: refused whole, with the line."""
    path = tmp_path / "in.jsonl"

    async def attempt(*stamps: int) -> Any:
        lines = [
            json.dumps({"room": "ordered", **entry(i, "ann", f"m{i}", stamp)})
            for i, stamp in enumerate(stamps, 1)
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return await cli(served.admin, "import", str(path))

    hour, day = 3_600_000, 86_400_000
    # In order (the same second twice too): stored.
    assert (await attempt(START_MS, START_MS + hour, START_MS + hour)).returncode == 0
    # Before what the room holds, even by an hour: under --retention-days 0.5
    # an import a day's slack let in cut a live message with it (the
    # re-check review). Refused, nothing stored.
    refused = await attempt(START_MS + 2 * hour, START_MS)
    assert refused.returncode == 1
    assert b"line 2: dated 2026-05-28" in refused.stderr, refused.stderr
    assert b"time order" in refused.stderr
    # Within one import too.
    refused = await attempt(START_MS + 3 * day, START_MS + 3 * day - 1)
    assert b"line 2: dated" in refused.stderr and b"time order" in refused.stderr
    # A year ahead of the server's clock.
    ahead = int(time.time() * 1000) + 365 * day
    refused = await attempt(START_MS + 2 * hour, ahead)
    assert b"line 2: dated" in refused.stderr and b"in the future" in refused.stderr
    # No time at all: an age limit's search would take it for the oldest.
    path.write_text(
        json.dumps({"room": "ordered", "name": "ann", "content": "x", "timestamp": "?"})
        + "\n",
        encoding="utf-8",
    )
    refused = await cli(served.admin, "import", str(path))
    assert b"line 1: its timestamp is not one chatbox can read" in refused.stderr
    contents = [
        line["content"] for line in await exported(served.admin, "?room=ordered")
    ]
    assert contents == ["m1", "m2", "m3"]


@ensureDeferred
async def test_an_export_that_breaks_midway_is_not_taken_for_whole(
    served, tmp_path, no_logged_failures
):
    """A room that fails after some pages: the server cuts the connection
    (no last chunk, the failure logged); the CLI says so, exits 1, and
    leaves no file, not even the part it had."""
    room = await _loaded(served, "")
    original = room.entries
    pages = 0

    def failing(after: int, limit: int) -> Deferred:
        nonlocal pages
        pages += 1
        if pages > 3:
            raise RuntimeError("the disk went away")
        return original(after, limit)

    room.entries = failing
    out = tmp_path / "cut.jsonl"
    result = await cli(served.admin, "export", "--room", "/", "-o", str(out))
    assert result.returncode == 1
    assert b"the export was cut short after" in result.stderr
    assert not out.exists() and not (tmp_path / "cut.jsonl.part").exists()
    room.entries = original
    # The server logged why, once.
    assert len(no_logged_failures) == 1
    assert "the disk went away" in no_logged_failures[0]
    no_logged_failures.clear()
