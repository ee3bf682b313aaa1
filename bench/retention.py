"""What read-time retention costs a cluster's `get`, and what the purge
costs Redis.

    python bench/retention.py [--messages 100000] [--rounds 5]

Starts its own redis-server (append-only file, fsync before every reply, as
the README asks of production) and one chatbox node in this process
(RedisRoom.from_address). Each round, on a flushed Redis, it writes
--messages history entries straight into the default room's ZSET (ZADD,
the first 90% more than a day old), then:

- page/keep-all, page/days, page/messages, page/both: 200 `get`s of the
  newest 50 with no retention, a day's, the newest 10% by count, and both
  (RedisRoom.page: the PAGE script);
- page-old/days: 200 `get`s of 50 from just after the cut (`after` an
  expired id), which is where the bisection's answer matters;
- purge: RedisRoom.expire with a day's retention (EXPIRE calls of
  EXPIRE_BATCH entries): its wall time, and Redis' CPU per EXPIRE call.

It prints Redis' own CPU per script call (INFO commandstats, reset before
each phase) and the calls per second, medians over the rounds, a Markdown
table, then one JSON line. Run it with PYTHONPATH=CHECKOUT on a chatbox
from before read-time retention (which ignores `retention`: its PAGE has no
cut) to compare the page phases; the purge phase needs expire().
"""

import argparse
import json
import os
import statistics
import sys
import time

from twisted.internet import defer, task

from bench.names import free_port, in_flight, redis_cli, script_usec
from chatbox.chat.retention import DAY_MS, KEEP_ALL, Retention
from chatbox.cluster.address import parse_redis_url
from chatbox.cluster.keys import Keys
from chatbox.cluster.room import RedisRoom

PAGES = 200


def entry(i: int, millis: int) -> bytes:
    return json.dumps(
        {
            "id": i,
            "name": f"User{i % 300}",
            "content": f"message number {i} " + "x" * 60,
            "timestamp": "Sun Dec 06 2026 10:00:00 GMT+0000",
            "time": millis,
        },
        separators=(",", ":"),
    ).encode()


async def one_round(reactor, url: str, port: int, count: int) -> dict:
    redis_cli(port, "FLUSHALL")
    room = RedisRoom.from_address(parse_redis_url(url), reactor, lease=30.0)
    room.attach(lambda event, exclude: None, lambda owners: None)
    room.start()
    while not room.ready:
        await task.deferLater(reactor, 0.05, lambda: None)
    keys = Keys.under()
    link = room._commands._link
    now = int(time.time() * 1000)
    old = count * 9 // 10
    for start in range(1, count + 1, 5000):
        pairs: list[object] = []
        for i in range(start, min(start + 5000, count + 1)):
            millis = now - 2 * DAY_MS + i if i <= old else now - 1000 + i - old
            pairs += [i, entry(i, millis)]
        await link.execute("ZADD", keys.history, *pairs)
    await link.execute("SET", keys.msgid, count)
    figures: dict[str, dict] = {}

    async def phase(name: str, calls) -> None:
        await calls[0]()
        redis_cli(port, "CONFIG", "RESETSTAT")
        started = time.perf_counter()
        await in_flight(calls[1:], 10)
        elapsed = time.perf_counter() - started
        done, usec = script_usec(port)
        figures[name] = {"usec_per_call": usec, "per_second": done / elapsed}

    for name, retention in (
        ("page/keep-all", KEEP_ALL),
        ("page/days", Retention(days=1)),
        ("page/messages", Retention(messages=count // 10)),
        ("page/both", Retention(days=1, messages=count // 10)),
    ):
        room.retention = retention
        await phase(name, [lambda: room.page(50, None, None, 0)] * PAGES)
    room.retention = Retention(days=1)
    await phase("page-old/days", [lambda: room.page(50, None, 10, 0)] * PAGES)
    if hasattr(room, "expire"):
        redis_cli(port, "CONFIG", "RESETSTAT")
        started = time.perf_counter()
        removed = await room.expire(int(time.time() * 1000))
        elapsed = time.perf_counter() - started
        calls, usec = script_usec(port)
        figures["purge"] = {
            "usec_per_call": usec,
            "per_second": calls / elapsed,
            "seconds": elapsed,
            "removed": removed,
        }
    await room.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import shutil
    import subprocess
    import tempfile

    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("bench/retention.py needs redis-server")
    folder = tempfile.mkdtemp(prefix="chatbox-retention-")
    port = free_port()
    server = subprocess.Popen(
        [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder,
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    rounds: list[dict] = []
    try:
        for _ in range(100):
            try:
                redis_cli(port, "PING")
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        url = f"redis://127.0.0.1:{port}/0"

        async def run(reactor):
            for _ in range(args.rounds):
                rounds.append(await one_round(reactor, url, port, args.messages))

        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as ended:
        if ended.code:
            raise
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)
    phases = list(rounds[0])
    medians = {
        phase: {
            key: statistics.median(r[phase][key] for r in rounds)
            for key in rounds[0][phase]
        }
        for phase in phases
    }
    print(f"code: {os.path.dirname(os.path.dirname(sys.modules['chatbox'].__file__))}")
    print(f"{args.messages} messages, 90% expired by age; medians of {args.rounds}")
    print("| phase | Redis us/call | calls/s |")
    print("| --- | --- | --- |")
    for phase in phases:
        m = medians[phase]
        print(f"| {phase} | {m['usec_per_call']:.1f} | {m['per_second']:.0f} |")
    if "purge" in medians:
        m = medians["purge"]
        print(f"purge: {m['removed']:.0f} removed in {m['seconds']:.2f} s")
    print(json.dumps({"medians": medians, "rounds": rounds}))


if __name__ == "__main__":
    main()
