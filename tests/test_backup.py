"""Backup and restore (issue 16), as README "Backups and restoring" tells
an operator to do them: real twistd processes, people sending meanwhile,
kill -9, the data folder wiped, restore, start again."""

import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.client import connect
from tests.history_ops import (
    GOTHIC,
    Twistd,
    admin_args,
    api,
    cli,
    exported,
    lines_of,
    messages,
    without_ids,
    write_history,
)
from tests.redis_server import RedisServer
from tests.server import start_server

DEFAULT_COUNT = 20_000
MATHS_COUNT = 5_000


def build(workdir: Path) -> None:
    write_history(workdir / "data.json", messages(DEFAULT_COUNT, ["alice", GOTHIC]))
    write_history(
        workdir / "data.rooms" / "maths.json", messages(MATHS_COUNT, ["carol", "dan"])
    )


class Load:
    """People sending in two rooms; every acknowledged message is kept
    with when it was acknowledged."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acked: list[tuple[float, str, int, str]] = []  # when, room, id, text
        self.running = True
        self.loops: list[Deferred] = []
        self.clients: list[Any] = []

    async def start(self) -> None:
        for i, room in enumerate(["", "maths", "", "maths"]):
            client = await connect(f"{self.url}/{room}")
            reply = await client.register(f"sender{i}")
            assert reply["status"] is True, reply
            self.clients.append(client)
            self.loops.append(Deferred.fromCoroutine(self._send(client, room, i)))

    async def _send(self, client: Any, room: str, who: int) -> None:
        n = 0
        while self.running:
            n += 1
            text = f"under load {who} {n}"
            try:
                reply = await client.say(text)
            except Exception:
                return  # the server was killed
            if reply.get("status") is not True:
                return
            self.acked.append((time.monotonic(), room, reply["id"], text))

    async def stop(self) -> None:
        self.running = False
        for client in self.clients:
            client.abort()
        for loop in self.loops:
            await loop


def wipe(workdir: Path) -> None:
    for path in workdir.iterdir():
        if path.name.startswith("data"):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


@ensureDeferred
async def test_backup_under_load_then_kill_wipe_restore(tmp_path):
    workdir = tmp_path / "server"
    workdir.mkdir()
    build(workdir)
    server = await Twistd.start(workdir, "--rooms=open")
    admin = server.admin
    for path, rule in (
        ("/v1/bans", {"name": "troll", "reason": "spam"}),
        ("/v1/reserved", {"pattern": "staff*"}),
    ):
        status, body = await api(admin, "POST", path, rule)
        assert status == 201, body
    status, body = await api(
        admin, "PUT", "/v1/slow-mode", {"room": "maths", "seconds": 5}
    )
    assert status == 200, body
    load = Load(server.url)
    await load.start()
    await deferLater(reactor, 0.3, lambda: None)
    began = time.monotonic()
    backup = tmp_path / "backup"
    made = await cli(admin, "--json", "backup", str(backup))
    took = time.monotonic() - began
    await deferLater(reactor, 0.2, lambda: None)
    assert made.returncode == 0, made.stderr
    before = {(room, text) for when, room, _, text in load.acked if when < began}
    assert len(before) > 20
    manifest = json.loads(made.stdout)
    assert manifest == json.loads((backup / "MANIFEST.json").read_text())
    rooms = {room["room"]: room for room in manifest["rooms"]}
    assert set(rooms) == {"", "maths"}
    assert rooms[""]["messages"] >= DEFAULT_COUNT
    assert sorted(manifest["files"]) == [
        "data.json",
        "data.moderation.json",
        "data.rooms/maths.json",
    ]
    assert not [p for p in backup.rglob("*.tmp")]
    # Each room is one consistent prefix: up to the newest id it had when
    # its turn came, though people went on sending.
    for room in rooms.values():
        stored = json.loads((backup / room["file"]).read_bytes())
        assert len(stored) == room["messages"]
        assert stored[-1]["id"] == room["last_id"]
    newer = [
        i for _, room, i, _ in load.acked if room == "" and i > rooms[""]["last_id"]
    ]
    assert newer  # sent during the backup, after the default room's turn
    print(
        f"\nbackup of {sum(r['messages'] for r in rooms.values())} messages under "
        f"load: {took:.2f} s (CLI start included)"
    )

    # Restoring over a server that runs is refused, even with --force.
    live = await cli(
        None, "restore", str(backup), "--data", str(workdir / "data.json"), "--force"
    )
    assert live.returncode == 1 and b"in use by another chatbox" in live.stderr

    await server.child.kill(signal.SIGKILL)
    await load.stop()
    # Over the history still there: refused without --force, nothing touched.
    kept = (workdir / "data.json").read_bytes()
    refused = await cli(
        None, "restore", str(backup), "--data", str(workdir / "data.json")
    )
    assert refused.returncode == 1 and b"--force" in refused.stderr
    assert (workdir / "data.json").read_bytes() == kept

    wipe(workdir)
    restored = await cli(
        None, "restore", str(backup), "--data", str(workdir / "data.json")
    )
    assert restored.returncode == 0, restored.stderr
    assert b"Next: start chatbox" in restored.stderr

    again = await Twistd.start(workdir, "--rooms=open")
    try:
        after = await exported(again.admin)
        present = {(line["room"], line["content"]) for line in after}
        assert before <= present
        per_room = {"": 0, "maths": 0}
        for line in after:
            per_room[line["room"]] += 1
        assert per_room == {r: rooms[r]["messages"] for r in per_room}
        # Ids go on rising after the restored ones.
        client = await connect(f"{again.url}/maths")
        await client.register("after")
        reply = await client.say("after the restore")
        assert reply["id"] > rooms["maths"]["last_id"]
        client.abort()
        # The rules are back.
        bans = json.loads((await api(again.admin, "GET", "/v1/bans"))[1])["bans"]
        assert [(ban["target"], ban["value"]) for ban in bans] == [("name", "troll")]
        reserved = json.loads((await api(again.admin, "GET", "/v1/reserved"))[1])
        assert reserved == {"reserved": ["staff*"]}
        slow = json.loads((await api(again.admin, "GET", "/v1/slow-mode"))[1])
        assert slow == {"rooms": {"maths": 5}}
    finally:
        await again.child.kill(signal.SIGTERM)


def _limit_file_size() -> None:
    """The disk filling up, as far as the backup can tell: any write past
    256 KiB fails (EFBIG, as ENOSPC would, through the same path)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


@ensureDeferred
async def test_an_unlucky_operator(tmp_path):
    """A folder that holds something, a disk that fills up, a backup edited
    or never finished: each refused with what to do, nothing half-written
    left looking whole."""
    workdir = tmp_path / "server"
    workdir.mkdir()
    build(workdir)
    server = await start_server(
        workdir / "data.json", "--rooms=open", *admin_args(workdir)
    )
    admin_port = server.service.getServiceNamed("admin").port.getHost().port
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        busy = tmp_path / "busy"
        busy.mkdir()
        (busy / "notes.txt").write_text("mine")
        refused = await cli(admin, "backup", str(busy))
        assert refused.returncode == 2 and b"not empty" in refused.stderr
        assert os.listdir(busy) == ["notes.txt"]

        full = tmp_path / "full"
        refused = await cli(admin, "backup", str(full), preexec_fn=_limit_file_size)
        assert refused.returncode == 1, refused.stderr
        assert b"backup failed: cannot write" in refused.stderr
        assert b"File too large; nothing of it was kept" in refused.stderr
        assert not full.exists()
        empty = tmp_path / "empty"
        empty.mkdir()
        refused = await cli(admin, "backup", str(empty), preexec_fn=_limit_file_size)
        assert refused.returncode == 1 and os.listdir(empty) == []

        # A disk that is really full, where this test may mount one.
        small = tmp_path / "small-disk"
        small.mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
            capture_output=True,
        )
        if mounted.returncode == 0:
            try:
                refused = await cli(admin, "backup", str(small / "backup"))
                assert refused.returncode == 1, refused.stderr
                assert b"No space left on device; nothing of it" in refused.stderr
                assert os.listdir(small) == []
            finally:
                subprocess.run(["umount", str(small)], check=True)

        good = tmp_path / "good"
        assert (await cli(admin, "backup", str(good))).returncode == 0
    finally:
        await server.stop()

    target = tmp_path / "restored"
    target.mkdir()
    data = str(target / "data.json")
    edited = tmp_path / "edited"
    shutil.copytree(good, edited)
    maths = edited / "data.rooms" / "maths.json"
    maths.write_bytes(maths.read_bytes().replace(b'"carol"', b'"carl!"', 1))
    refused = await cli(None, "restore", str(edited), "--data", data)
    assert refused.returncode == 1 and b"sha256 differs" in refused.stderr
    (edited / "MANIFEST.json").unlink()
    refused = await cli(None, "restore", str(edited), "--data", data)
    assert refused.returncode == 2 and b"not a backup" in refused.stderr
    assert os.listdir(target) == []

    restored = await cli(None, "restore", str(good), "--data", data)
    assert restored.returncode == 0, restored.stderr
    assert sorted(os.listdir(target)) == [
        "data.json",
        "data.json.lock",
        "data.moderation.json",
        "data.rooms",
    ]
    assert (target / "data.json").read_bytes() == (good / "data.json").read_bytes()

    # --force over history that holds text a restore must not keep (after
    # an erasure, say): the kept bytes of a torn write go too.
    torn = target / "data.json.torn-20261201T000000Z"
    torn.write_text('{"content": "erased words"}\n')
    (target / "data.json.journal").write_text("1 {}\n")
    refused = await cli(None, "restore", str(good), "--data", data)
    assert refused.returncode == 1 and b"data.json.torn-" in refused.stderr
    forced = await cli(None, "restore", str(good), "--data", data, "--force")
    assert forced.returncode == 0, forced.stderr
    assert not torn.exists() and not (target / "data.json.journal").exists()
    assert (target / "data.json").read_bytes() == (good / "data.json").read_bytes()


@ensureDeferred
async def test_a_cluster_exported_and_backed_up_into_one_process(tmp_path):
    """Two nodes on one Redis: history imported through node A's admin API
    (RedisRoom.import_entries), people sending on node B, then an export
    and a backup from A; the backup restored as one process's files holds
    the cluster's history, ids and all."""
    redis = RedisServer(tmp_path)
    await redis.start()
    nodes: list[Twistd] = []
    try:
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            nodes.append(
                await Twistd.start(workdir, f"--redis={redis.url}", "--rooms=open")
            )
        a, b = nodes
        lines = tmp_path / "in.jsonl"
        with open(lines, "w", encoding="utf-8") as f:
            for room, count in (("", 4_000), ("maths", 1_000)):
                for item in messages(count, ["alice", GOTHIC]):
                    f.write(json.dumps({"room": room, **item}, ensure_ascii=False))
                    f.write("\n")
        done = await cli(a.admin, "import", str(lines))
        assert done.returncode == 0, done.stderr
        sender = await connect(f"{b.url}/maths")
        assert (await sender.register("bob"))["status"] is True
        for i in range(5):
            assert (await sender.say(f"on node b {i}"))["status"] is True
        sender.abort()

        out = tmp_path / "cluster.jsonl"
        assert (await cli(a.admin, "export", "-o", str(out))).returncode == 0
        from_cluster = lines_of(out)
        assert len(from_cluster) == 5_005
        assert without_ids(from_cluster[:5_000]) == without_ids(lines_of(lines))
        assert from_cluster[-1]["content"] == "on node b 4"

        backup = tmp_path / "backup"
        made = await cli(a.admin, "backup", str(backup))
        assert made.returncode == 0, made.stderr
    finally:
        for node in nodes:
            await node.child.kill(signal.SIGTERM)
        await redis.kill(signal.SIGTERM)

    single = tmp_path / "single"
    single.mkdir()
    restored = await cli(
        None, "restore", str(backup), "--data", str(single / "data.json")
    )
    assert restored.returncode == 0, restored.stderr
    alone = await Twistd.start(single, "--rooms=open")
    try:
        assert await exported(alone.admin) == from_cluster
    finally:
        await alone.child.kill(signal.SIGTERM)
