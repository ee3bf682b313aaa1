"""Faults a public server meets: signals, slow shutdowns, full disks, bad files.

The server runs under the real twistd as a child process, so signals, exit
statuses and the file system are the real ones.
"""

import json
import os
import shutil
import signal
import subprocess

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.client import connect
from tests.process import spawn, start
from tests.rawclient import RawClient


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@ensureDeferred
async def test_a_stop_signal_closes_everyone_with_1001_saves_and_exits_0(
    tmp_path, signum
):
    server = await start(tmp_path)
    port = int(server.url.rsplit(":", 1)[1])

    def session() -> tuple[list[int], int | None, int | None]:
        an, lurker = RawClient(port), RawClient(port)
        assert an.request({"type": "name", "name": "An"})["status"] is True
        ids = [an.request({"type": "send", "content": f"m{i}"})["id"] for i in range(5)]
        os.kill(server.transport.pid, signum)
        return ids, an.close_code(), lurker.close_code()

    started = reactor.seconds()
    acked, an_code, lurker_code = await deferToThread(session)
    assert (an_code, lurker_code) == (1001, 1001)
    await server.ended.addTimeout(10, reactor)
    assert server.exit_code == 0, server.output.decode()
    assert reactor.seconds() - started < 5
    saved = json.loads((tmp_path / "data.json").read_text())
    assert [m["id"] for m in saved] == acked


@ensureDeferred
async def test_shutdown_is_bounded_even_with_a_client_that_stopped_reading(tmp_path):
    server = await start(tmp_path, "--shutdown-timeout=2")
    sleeper = await connect(server.url)
    await sleeper.register("Sleeper")
    sleeper.transport.pauseProducing()
    started = reactor.seconds()
    await server.kill(signal.SIGTERM)
    assert reactor.seconds() - started < 6
    assert server.exit_code == 0, server.output.decode()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (
            '[{"name": "An", "content": "x", "timestamp": "t"}\n{"oops"}]',
            "not valid JSON",
        ),
        ('{"name": "An"}', "expected a JSON array of messages, found dict"),
        ('[{"name": "An", "content": 42, "timestamp": "t"}]', "message #1: 'content'"),
        ('[{"name": "An", "content": "x"}]', "message #1: 'timestamp' is missing"),
    ],
)
@ensureDeferred
async def test_a_bad_history_file_stops_start_up_with_one_line(tmp_path, content, says):
    data = tmp_path / "data.json"
    data.write_text(content)
    process = spawn(tmp_path)
    with pytest.raises(RuntimeError):
        await process.started
    assert process.exit_code != 0
    lines = [line for line in process.output.decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert (
        lines[0].startswith("chatbox: cannot start: data.json: ") and says in lines[0]
    )
    assert data.read_text() == content


# -- a full disk, for real: a tiny tmpfs --


@pytest.fixture
def tiny_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk, leave: int) -> None:
    """Fill the disk but for about `leave` bytes."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


@ensureDeferred
async def test_a_full_disk_refuses_sends_then_recovers_losing_nothing(tiny_disk):
    server = await start(tiny_disk)
    try:
        an = await connect(server.url)
        bo = await connect(server.url)
        await an.register("An")
        await bo.register("Bo")
        acked = [(await an.say(f"before {i}"))["id"] for i in range(20)]

        fill(tiny_disk, leave=0)
        # tmpfs hands out whole pages, so the journal's last page may still
        # take a message or two: send until the disk says no.
        refusals = []
        for i in range(200):
            reply = await an.say(f"while full {i} " + "x" * 3900)
            if reply["status"]:
                acked.append(reply["id"])
            else:
                refusals.append(reply)
                break
        assert refusals, "the disk never filled up"
        assert refusals[0]["reason"] == "ErrorWhenSend"
        assert refusals[0]["error"] == "No space left on device"  # no path, no trace
        assert (await bo.get())["status"] is True  # the server is up
        # A busy chat on a full disk: one log line when writing starts to
        # fail, one when it works again, not a line per failed send.
        for i in range(30):
            assert (await an.say(f"still full {i} " + "x" * 3900))["status"] is False

        os.unlink(tiny_disk / "filler")
        for i in range(20):
            reply = await an.say(f"after {i}")
            assert reply["status"] is True, reply
            acked.append(reply["id"])
    finally:
        await server.kill(signal.SIGKILL)
    assert server.output.count(b"could not write") == 1
    assert b"works again, after 31 failed write(s)" in server.output

    again = await start(tiny_disk)
    try:
        reader = await connect(again.url)
        await reader.register("Reader")
        history = (await reader.get())["data"]["message"]
        assert [m["id"] for m in history] == acked  # all acked, nothing refused
        # The refused batch gave its ids back: no gap for start-up to refuse.
        assert acked == list(range(1, len(acked) + 1))
    finally:
        await again.kill(signal.SIGTERM)
    assert again.exit_code == 0
    saved = json.loads((tiny_disk / "data.json").read_text())
    assert [m["id"] for m in saved] == acked


@ensureDeferred
async def test_a_disk_that_fills_at_shutdown_keeps_everything_for_the_next_start(
    tiny_disk,
):
    server = await start(tiny_disk)
    an = await connect(server.url)
    await an.register("An")
    acked = [(await an.say(f"m{i} " + "y" * 800))["id"] for i in range(100)]
    fill(tiny_disk, leave=0)  # the final fold cannot write data.json.tmp
    await server.kill(signal.SIGTERM)
    assert server.exit_code != 0  # not a clean save: say so
    assert b"the journal keeps it for the next start" in server.output
    assert b"history saved" not in server.output
    assert b"history NOT saved: the final write to data.json failed" in server.output
    assert b"data.json.tmp" in server.output  # names the file that failed
    os.unlink(tiny_disk / "filler")
    await deferLater(reactor, 0)
    again = await start(tiny_disk)
    await again.kill(signal.SIGTERM)
    saved = json.loads((tiny_disk / "data.json").read_text())
    assert [m["id"] for m in saved] == acked


def history_files(folder) -> dict:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.iterdir()
        if p.name.startswith("data.json")
    }


async def crashed_with_a_journal(disk) -> list[int]:
    """Leave what a kill -9 leaves: a journal still to fold at start-up."""
    server = await start(disk)
    an = await connect(server.url)
    await an.register("An")
    acked = [(await an.say(f"m{i} " + "z" * 500))["id"] for i in range(100)]
    await server.kill(signal.SIGKILL)
    assert (disk / "data.json.journal").stat().st_size > 50_000
    return acked


async def refused_start(disk) -> str:
    before = history_files(disk)
    process = spawn(disk)
    with pytest.raises(RuntimeError):
        await process.started
    assert process.exit_code != 0
    assert history_files(disk) == before
    lines = [line for line in process.output.decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@ensureDeferred
async def test_start_up_on_a_full_disk_names_the_file(tiny_disk):
    acked = await crashed_with_a_journal(tiny_disk)
    fill(tiny_disk, leave=0)
    said = await refused_start(tiny_disk)
    # Was `cannot start: None: No space left on device`.
    assert said == "chatbox: cannot start: data.json.tmp: No space left on device"
    os.unlink(tiny_disk / "filler")
    again = await start(tiny_disk)
    await again.kill(signal.SIGTERM)
    saved = json.loads((tiny_disk / "data.json").read_text())
    assert [m["id"] for m in saved] == acked


@ensureDeferred
async def test_start_up_on_a_read_only_data_folder_names_the_file(tiny_disk):
    await crashed_with_a_journal(tiny_disk)
    remounted = subprocess.run(
        ["mount", "-o", "remount,ro", str(tiny_disk)], capture_output=True, text=True
    )
    assert remounted.returncode == 0, remounted.stderr
    said = await refused_start(tiny_disk)
    assert said == "chatbox: cannot start: data.json.lock: Read-only file system"


@ensureDeferred
async def test_start_up_raises_a_low_open_file_limit(tmp_path):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard open file limit here is too low to show a raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        server = spawn(tmp_path)  # inherits the soft limit of 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    await server.started
    await server.kill(signal.SIGTERM)
    assert b"open file limit raised from 256 to " in server.output
