"""A second chatbox on the same history refuses at once and touches nothing.

Both servers are real `twistd -n chatbox` child processes, so the lock is
the kernel's, and the kill -9 afterwards is real too.
"""

import os
import signal
import sysconfig
from pathlib import Path

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from tests.client import connect
from tests.process import START_TIMEOUT, spawn, start

CHATBOX_REDIS = str(Path(sysconfig.get_path("scripts")) / "chatbox-redis")


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.iterdir()
        if p.name.startswith("data.json")
    }


async def refused(workdir: Path, *args: str) -> str:
    process = spawn(workdir, *args)
    try:
        await process.started.addTimeout(START_TIMEOUT, reactor)
    except RuntimeError:
        pass  # exited before listening: what it must do
    else:
        await process.kill(signal.SIGKILL)
        pytest.fail(f"a second server started: {process.output.decode()}")
    assert process.exit_code != 0
    lines = [line for line in process.output.decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@ensureDeferred
async def test_a_second_server_refuses_touches_nothing_and_the_first_keeps_all(
    tmp_path,
):
    home = tmp_path / "home"
    elsewhere = tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    first = await start(home)
    acked = []
    try:
        an = await connect(first.url)
        await an.register("An")
        for i in range(200):
            reply = await an.say(f"before {i}")
            acked.append((reply["id"], reply["content"]))
        before = snapshot(home)
        assert before["data.json.journal"][0]  # acknowledged, not yet folded
        pid = first.transport.pid
        said = (
            "chatbox: cannot start: {} is in use by another chatbox "
            f"(pid {pid}); stop it first or use another --data"
        )
        # Same folder (so another port: each child asks for port 0), another
        # folder by absolute path, another folder by relative path.
        for workdir, data in [
            (home, "data.json"),
            (elsewhere, str(home / "data.json")),
            (elsewhere, "../home/data.json"),
        ]:
            assert await refused(workdir, f"--data={data}") == said.format(data)
            assert snapshot(home) == before
        for i in range(50):
            reply = await an.say(f"after {i}")
            assert reply["id"] == acked[-1][0] + 1  # no other server's ids
            acked.append((reply["id"], reply["content"]))
    finally:
        await first.kill(signal.SIGKILL)

    again = await start(home)
    try:
        reader = await connect(again.url)
        await reader.register("Reader")
        history = (await reader.get())["data"]["message"]
        assert [(m["id"], m["content"]) for m in history] == acked
    finally:
        await again.kill(signal.SIGTERM)
    assert again.stopped_cleanly, again.output.decode()


@ensureDeferred
async def test_chatbox_redis_refuses_a_history_a_server_holds(tmp_path):
    server = await start(tmp_path)
    try:
        an = await connect(server.url)
        await an.register("An")
        await an.say("hello")
        before = snapshot(tmp_path)
        for command in ("import", "export"):
            out, err, code = await getProcessOutputAndValue(
                CHATBOX_REDIS,
                [command, "--force", "--redis", "redis://127.0.0.1:1/0", "data.json"]
                if command == "export"
                else [command, "--redis", "redis://127.0.0.1:1/0", "data.json"],
                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                path=str(tmp_path),
            )
            assert code == 1, (out, err)
            assert err.decode().strip() == (
                "chatbox-redis: data.json is in use by another chatbox "
                f"(pid {server.transport.pid}); stop it first"
            )
            assert snapshot(tmp_path) == before
    finally:
        await server.kill(signal.SIGTERM)
    assert server.stopped_cleanly, server.output.decode()


@ensureDeferred
async def test_a_history_reached_through_a_symbolic_link_is_the_same_history(
    tmp_path,
):
    """Seen by a reviewer: a second server given a link to the first one's
    data.json started (its lock was beside the link), and on shutdown the
    link was replaced by a file of its own."""
    home = tmp_path / "home"
    other = tmp_path / "other"
    home.mkdir()
    other.mkdir()
    (other / "alias.json").symlink_to(home / "data.json")
    first = await start(home)
    try:
        said = await refused(other, f"--data={other / 'alias.json'}")
        assert "is in use by another chatbox" in said
    finally:
        await first.kill(signal.SIGTERM)
    # Alone, a server run through the link writes the real file, and the
    # link stays a link.
    through_link = await start(other, f"--data={other / 'alias.json'}")
    try:
        client = await connect(through_link.url)
        await client.register("Linked")
        assert (await client.say("through the link"))["status"] is True
    finally:
        await through_link.kill(signal.SIGTERM)
    assert through_link.stopped_cleanly, through_link.output.decode()
    assert (other / "alias.json").is_symlink()
    assert b"through the link" in (home / "data.json").read_bytes()
    assert not (other / "alias.json.lock").exists()
