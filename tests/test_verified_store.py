"""Verified nicknames (issue 15) in a single process: LocalRoom over a real
DurableStore (real files, fsync, folds on the store's threads).

Nothing on the wire makes a verified claim or post yet (tokens are another
part), so the room is driven through IRoom. The store that is killed is a
child process running the same LocalRoom and DurableStore:

    python -m tests.test_verified_store DATA_JSON COUNT FOLD_THRESHOLD

posts COUNT messages (tests.test_cluster_verified.mark_of says which are
verified, plain or announcements), printing `acked ID` as each is durable
and `done` after the last, then waits for SIGTERM (a clean stop: the room
closes, as a server's does) or SIGKILL.
"""

import json
import random
import signal
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol

from chatbox.chat.arns import NameTaken
from chatbox.local import datafile
from chatbox.local.room import LocalRoom
from chatbox.local.store import DurableStore
from chatbox.wire import codec, messages
from chatbox.wire.clock import Timestamps
from tests.process import REPOSITORY, child_env

USERS = 2000
MESSAGES = 10_000
# Small, so the journal is folded into data.json several times meanwhile.
FOLD_THRESHOLD = 64 * 1024


def now():
    return Timestamps().now()


def mark_of(i: int) -> str | None:
    """Message i's mark: mostly verified, some plain, a few announcements."""
    if i % 97 == 0:
        return "announcement"
    return None if i % 5 == 4 else "verified"


def marks(entries: list[bytes]) -> dict[int, str | None]:
    """Each entry's id and mark; a mark is `true` or absent, one at most."""
    found = {}
    for entry in map(codec.decode, entries):
        given = [mark for mark in messages.MARKS if mark in entry]
        assert len(given) <= 1 and all(entry[m] is True for m in given), entry
        found[entry["id"]] = given[0] if given else None
    return found


@pytest_twisted.async_yield_fixture
async def room(tmp_path):
    store = DurableStore(str(tmp_path / "data.json"), reactor)
    store.load()
    store.start()
    local = LocalRoom(store, reactor.seconds)
    local.events = []
    local.attach(lambda event, exclude: local.events.append(event), print)
    yield local
    await local.close()


async def refusal(claim: Deferred) -> NameTaken:
    try:
        await claim
    except NameTaken as refused:
        return refused
    raise AssertionError("the claim was not refused")


@pytest_twisted.ensureDeferred
async def test_2000_users_a_quarter_verified_in_one_room(room):
    owners = [f"user{i}" for i in range(USERS)]
    names = {}
    flagged = set()
    for i, owner in enumerate(owners):
        names[owner] = f"User{i}"
        if i % 4 == 0:
            flagged.add(owner)
        await room.claim(owner, names[owner], now(), owner in flagged)

    async def page_agrees() -> None:
        page = await room.page(50, None, None, 0)
        assert page.online == list(names.values())
        assert page.verified == [names[o] for o in names if o in flagged]

    await page_agrees()
    joins = [e for e in room.events if e["datatype"] == "register"]
    assert [e.get("verified") for e in joins] == [
        True if i % 4 == 0 else None for i in range(USERS)
    ]
    for i in range(0, 400, 7):
        refused = await refusal(room.claim(f"late{i}", f"user{i}", now(), True))
        assert refused.verified is (i % 4 == 0), i

    picked = random.Random(15).sample(owners, 600)
    for n, owner in enumerate(picked):
        becomes = (n % 3 == 0 and owner in flagged) or n % 3 == 1
        names[owner] = f"Renamed{n}"
        await room.rename(owner, names[owner], now(), becomes)
        (flagged.add if becomes else flagged.discard)(owner)
        told = room.events[-1]
        assert told["newname"] == names[owner]
        assert told.get("verified") is (True if becomes else None)
    for owner in random.Random(7).sample(owners, 500):
        assert room.release(owner, now()) == names.pop(owner)
        flagged.discard(owner)
    await page_agrees()
    # A freed verified name is free for anyone, and says nothing of its past.
    gone = next(o for o in owners if o not in names)
    await room.claim("taker", "user" + gone.removeprefix("user"), now())
    refused = await refusal(room.claim("again", gone, now(), True))
    assert refused.verified is False


class Child(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.acked: list[int] = []
        self.enough: tuple[int, Deferred] | None = None
        self.done: Deferred = Deferred()
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        *lines, rest = self.output.split(b"\n")
        self.output = rest
        for line in lines:
            if line.startswith(b"acked "):
                self.acked.append(int(line.split()[1]))
            elif line == b"done" and not self.done.called:
                self.done.callback(None)
        if self.enough is not None and len(self.acked) >= self.enough[0]:
            _, waiting = self.enough
            self.enough = None
            waiting.callback(None)

    errReceived = outReceived

    def reached(self, count: int) -> Deferred:
        waiting: Deferred = Deferred()
        self.enough = (count, waiting)
        return waiting.addTimeout(120, reactor)

    def processEnded(self, reason) -> None:
        self.exit_code = reason.value.exitCode
        self.ended.callback(None)


def spawn_poster(path: Path) -> Child:
    child = Child()
    reactor.spawnProcess(
        child,
        sys.executable,
        [
            sys.executable, "-m", "tests.test_verified_store",
            str(path), str(MESSAGES), str(FOLD_THRESHOLD),
        ],
        env=child_env(),
        path=REPOSITORY,
    )  # fmt: skip
    return child


def reload(path: Path) -> dict[int, str | None]:
    """The history as start-up reads it back (the journal replayed and
    folded into data.json), by id with each mark."""
    store = DurableStore(str(path), reactor)
    store.load()
    found = marks(store.history.entries)
    store._lock.release()
    return found


def expected(ids: list[int]) -> dict[int, str | None]:
    return {message_id: mark_of(message_id - 1) for message_id in ids}


@pytest_twisted.ensureDeferred
async def test_10000_verified_messages_outlive_sigterm_with_their_marks(tmp_path):
    path = tmp_path / "data.json"
    child = spawn_poster(path)
    await child.done.addTimeout(300, reactor)
    child.transport.signalProcess(signal.SIGTERM)
    await child.ended
    assert child.exit_code == 0
    assert len(child.acked) == MESSAGES
    # The clean stop folded everything into data.json, marks and all.
    assert not Path(str(path) + ".journal").read_bytes()
    stored = json.loads(path.read_text())
    assert marks([codec.encode(e) for e in stored]) == expected(child.acked)
    assert reload(path) == expected(child.acked)


@pytest_twisted.ensureDeferred
async def test_verified_messages_outlive_kill_9_mid_stream(tmp_path):
    path = tmp_path / "data.json"
    child = spawn_poster(path)
    await child.reached(MESSAGES // 2)
    child.transport.signalProcess(signal.SIGKILL)
    await child.ended
    acked = child.acked
    # Folds ran meanwhile: data.json already holds marked entries; the
    # rest is in the journal.
    in_array = marks([codec.encode(e) for e in json.loads(path.read_text())])
    assert "verified" in in_array.values() and "announcement" in in_array.values()
    assert in_array == expected(list(in_array))
    found = reload(path)
    assert set(acked) <= set(found)
    assert found == expected(list(found))  # acknowledged or not, each as posted
    assert sum(mark == "verified" for mark in found.values()) >= len(acked) * 3 // 4


@pytest_twisted.ensureDeferred
async def test_a_v2_history_without_marks_loads_beside_marked_ones(tmp_path):
    path = tmp_path / "data.json"
    stamp = "24/11/2026, 14:05:09"
    path.write_text(
        json.dumps(
            [
                {"name": "An", "content": "v2", "timestamp": stamp},
                {"name": "Bo", "content": "v2 too", "timestamp": stamp},
                # ext: written by a server with marks; `false` is no mark.
                {"id": 3, "name": "chatbox", "content": "news", "timestamp": stamp,
                 "announcement": True},
                {"id": 4, "name": "Vy", "content": "hi", "timestamp": stamp,
                 "verified": True},
                {"id": 5, "name": "Gu", "content": "yo", "timestamp": stamp,
                 "verified": False},
            ]
        )
    )  # fmt: skip
    loaded = datafile.load(str(path))
    assert marks(loaded.entries) == {
        1: None, 2: None, 3: "announcement", 4: "verified", 5: None,
    }  # fmt: skip


def _post(path: str, count: int, threshold: int) -> None:
    store = DurableStore(path, reactor, fold_threshold=threshold)
    store.load()
    store.start()
    room = LocalRoom(store, reactor.seconds)
    room.claim("vy", "Vy", now(), True)
    room.claim("gu", "Gu", now())

    def acked(posted) -> None:
        print("acked", posted.id, flush=True)

    async def post() -> None:
        for start in range(0, count, 100):
            batch = []
            for i in range(start, min(start + 100, count)):
                mark = mark_of(i)
                if mark == "announcement":
                    done = room.post(None, "chatbox", f"{i}", now(), None, mark)
                elif mark == "verified":
                    done = room.post("vy", "Vy", f"m{i}", now(), None, mark)
                else:
                    done = room.post("gu", "Gu", f"m{i}", now(), None)
                batch.append(done.addCallback(acked))
            await gatherResults(batch)
        print("done", flush=True)

    Deferred.fromCoroutine(post()).addErrback(
        lambda failure: (print(failure.getTraceback(), flush=True), reactor.stop())
    )
    reactor.addSystemEventTrigger("before", "shutdown", room.close)
    reactor.run()


if __name__ == "__main__":
    _post(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
