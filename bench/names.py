"""What the cluster's name and message scripts cost Redis, script by script.

    python bench/names.py [--users 2000] [--messages 10000] [--rounds 5]

Starts its own redis-server (append-only file, fsync before every reply, as
the README asks of production) and one chatbox node in this process
(RedisRoom.from_address), and each round, on a flushed Redis:

- claim:   --users nicknames, 100 in flight, a quarter of them verified;
- post:    --messages messages from those nicknames, 100 in flight, the
           verified ones' marked "verified";
- page:    200 `get`s of 50 entries, with every nickname online;
- release: every nickname.

Each phase's first call runs alone before the figures start: it loads
its script, so the rest run by hash (EVALSHA), as a running node's do.
For each phase it prints Redis' own CPU per script call (EVALSHA's
usec_per_call from INFO commandstats, reset before the phase: the node's
heartbeat is a few calls among thousands) and the node's calls per second.
Medians over the rounds, a Markdown table, then one JSON line. Run it on
two checkouts (PYTHONPATH=CHECKOUT) to compare them: it uses IRoom calls
only, so a chatbox from before verified nicknames runs it too (it takes
the flag and ignores it).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task

from chatbox.cluster.address import parse_redis_url
from chatbox.cluster.room import RedisRoom
from chatbox.wire.clock import Timestamps

IN_FLIGHT = 100
PHASES = ("claim", "post", "page", "release")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def script_usec(port: int) -> tuple[int, float]:
    """Script calls and Redis' microseconds per call since the last reset:
    EVALSHA's and EVAL's (a script's first calls, which load it, are EVALs,
    and so is a burst sent before the first NOSCRIPT came back)."""
    calls, usec = 0, 0.0
    for line in redis_cli(port, "INFO", "commandstats").splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            fields = dict(part.split("=") for part in line.split(":", 1)[1].split(","))
            calls += int(fields["calls"])
            usec += float(fields["usec"])
    return calls, usec / calls if calls else 0.0


async def in_flight(calls, most: int = IN_FLIGHT) -> None:
    """Run the zero-argument callables, `most` at a time."""
    calls = list(calls)
    for start in range(0, len(calls), most):
        await defer.gatherResults([call() for call in calls[start : start + most]])


async def one_round(reactor, url: str, port: int, users: int, count: int) -> dict:
    redis_cli(port, "FLUSHALL")
    room = RedisRoom.from_address(parse_redis_url(url), reactor, lease=30.0)
    room.attach(lambda event, exclude: None, lambda owners: None)
    room.start()
    while not room.ready:
        await task.deferLater(reactor, 0.05, lambda: None)
    stamps = Timestamps(reactor.seconds)
    owners = [f"o{i}" for i in range(users)]
    figures: dict[str, dict] = {}

    async def phase(name: str, calls) -> None:
        # The first call alone, outside the figures: it loads the script,
        # so the rest run by its hash (EVALSHA) as a running node's do.
        await calls[0]()
        redis_cli(port, "CONFIG", "RESETSTAT")
        started = time.perf_counter()
        await in_flight(calls[1:])
        elapsed = time.perf_counter() - started
        done, usec = script_usec(port)
        figures[name] = {"usec_per_call": usec, "per_second": done / elapsed}

    await phase(
        "claim",
        [
            lambda i=i: room.claim(owners[i], f"User{i}", stamps.now(), i % 4 == 0)
            for i in range(users)
        ],
    )

    def post(i: int):
        author = i % users
        mark = "verified" if author % 4 == 0 else None
        return room.post(
            owners[author], f"User{author}", f"message {i}", stamps.now(), None, mark
        )

    await phase("post", [lambda i=i: post(i) for i in range(count)])
    await phase("page", [lambda: room.page(50, None, None, 0)] * 200)

    def release(owner: str):
        room.release(owner, stamps.now())
        return room.flush()

    await phase("release", [lambda o=o: release(o) for o in owners])
    await room.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("bench/names.py needs redis-server")
    folder = tempfile.mkdtemp(prefix="chatbox-names-")
    port = free_port()
    server = subprocess.Popen(
        [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder,
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                redis_cli(port, "PING")
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        url = f"redis://127.0.0.1:{port}/0"
        rounds: list[dict] = []

        async def run(reactor):
            for _ in range(args.rounds):
                rounds.append(
                    await one_round(reactor, url, port, args.users, args.messages)
                )

        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as ended:
        if ended.code:
            raise
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)
    medians = {
        phase: {
            key: statistics.median(r[phase][key] for r in rounds)
            for key in ("usec_per_call", "per_second")
        }
        for phase in PHASES
    }
    print(f"code: {os.path.dirname(os.path.dirname(sys.modules['chatbox'].__file__))}")
    print("| script | Redis us/call | calls/s |")
    print("| --- | --- | --- |")
    for phase in PHASES:
        m = medians[phase]
        print(f"| {phase} | {m['usec_per_call']:.1f} | {m['per_second']:.0f} |")
    print(json.dumps({"medians": medians, "rounds": rounds}))


if __name__ == "__main__":
    main()
