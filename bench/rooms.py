"""Measure chatbox's rooms against issue 13's targets, in one run.

    python bench/rooms.py [--rounds 3] [--quick] [--syscalls] [--only joins]

Runs, each in fresh servers and temporary folders (`--rooms open
--max-rooms 2000`, durability on, rate limiting off, as bench/compare.py):
1. 1,000 rooms of 1,000 messages each on disk (v2 JSON arrays written by
   chatbox's own writer, as a room's file is after a fold): time to
   listening and RSS at start; then clients join 50 of the rooms and send
   in each, and RSS is read with them all still connected.
2. First join of an idle room with a 10,000-message history: the time from
   connect to the bare `get`'s reply (the classic client's join: connect,
   `name`, bare `get`), one room after another; then the same rooms again,
   now loaded, for comparison.
3. The cost of a delivery in rooms: 100 rooms x 20 clients, one sender in
   each, against the same 2,000 clients and the same 100 senders in one
   room, alternated, each in a fresh server. The server's CPU time (all its
   threads, /proc/PID/stat) over the sending, divided by the deliveries the
   clients counted. A control layout, one room of 20 clients with its one
   sender sending as many messages as all 100 senders do, shows what 100
   rooms cost beyond what one room of that size does. With `--syscalls`
   (Linux perf), the server's send()s per delivery and fsyncs per message
   too: what one busy room coalesces and many quiet ones cannot.

The load generator runs as its own process: this file again, with
`--drive`, built on bench/load.py's client. Its CPU share is printed with
each traffic figure. Prints a Markdown table and, last, one JSON line with
everything. `--quick` is a small run for CI's smoke test, not for figures.
"""

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402
import load  # noqa: E402

from chatbox.local import datafile  # noqa: E402
from chatbox.wire import clock, codec  # noqa: E402
from chatbox.wire import messages as wire  # noqa: E402

PYTHON = sys.executable
# WebSocket pings off: at 2,000 clients in one room the generator reads
# seconds behind the server (fan-out p99 3-7 s), and a client further behind
# than the ping timeout is dropped as dead ("WebSocket ping timeout", seen
# here with --ws-ping-timeout 2), losing deliveries; and pings are CPU that
# grows with a run's length, not with its deliveries.
ROOMS = ["--rooms=open", "--max-rooms=2000", "--ws-ping-interval=0"]

FULL = {
    "stored_rooms": 1000,
    "stored_messages": 1000,
    "active_rooms": 50,
    "active_clients": 4,
    "active_messages": 20,
    "join_rooms": 20,
    "join_history": 10_000,
    "rooms": 100,
    "per_room": 20,
    "messages": 20,
    "in_flight": 2,
}
QUICK = {
    "stored_rooms": 60,
    "stored_messages": 200,
    "active_rooms": 5,
    "active_clients": 3,
    "active_messages": 5,
    "join_rooms": 3,
    "join_history": 2_000,
    "rooms": 5,
    "per_room": 4,
    "messages": 10,
    "in_flight": 2,
}


# -- the generator's side (its own process) ----------------------------------


def cpu_seconds(pid: int, task: int | None = None) -> float:
    """User + system CPU of every thread of process `pid` so far, or of its
    thread `task` alone."""
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SYSCALLS = ("sendto", "epoll_ctl", "epoll_wait", "recvfrom", "write", "fsync", "futex")


def count_syscalls(pid: int) -> tuple[subprocess.Popen, str]:
    """Start counting the server's system calls (perf's tracepoints, which
    cost it next to nothing, unlike strace)."""
    handle, out = tempfile.mkstemp(prefix="chatbox-perf-")
    os.close(handle)
    events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS)
    perf = subprocess.Popen(
        ["perf", "stat", "-x", ",", "-e", events, "-p", str(pid), "-o", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # attached
    return perf, out


def counted(counting: tuple[subprocess.Popen, str]) -> dict[str, int]:
    perf, out = counting
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=30)
    found = {}
    for line in Path(out).read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2].startswith("syscalls:sys_enter_"):
            found[fields[2].removeprefix("syscalls:sys_enter_")] = int(fields[0])
    os.unlink(out)
    return found


async def settle(stats: load.Stats, quiet: float = 0.5, most: float = 120.0) -> None:
    """Wait until the join events of the setup stop arriving (2,000 joins in
    one room are 2 million events), so none of them is counted or timed."""
    deadline = time.monotonic() + most
    seen = -1
    while stats.deliveries != seen and time.monotonic() < deadline:
        seen = stats.deliveries
        await asyncio.sleep(quiet)


async def drive_traffic(spec: dict) -> dict:
    """Clients spread in turn over `urls` (one per room); the first `senders`
    send `messages` each. Deliveries expected: each message reaches every
    other client of its sender's room."""
    urls, clients, senders = spec["urls"], spec["clients"], spec["senders"]
    stats = load.Stats()
    connected = await load.connect_many(",".join(urls), clients, stats, "load")
    members = [0] * len(urls)
    for i in range(clients):
        members[i % len(urls)] += 1
    count = spec["messages"]
    expected = sum(count * (members[i % len(urls)] - 1) for i in range(senders))
    await settle(stats)
    stats.deliveries = 0
    stats.fanout_ns.clear()
    pid = spec["pid"]
    counting = count_syscalls(pid) if spec.get("syscalls") else None
    server0, reactor0 = cpu_seconds(pid), cpu_seconds(pid, pid)
    own0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.monotonic()
    stats.first_send = load.now_ns()
    acked = sum(
        await asyncio.gather(
            *(
                load.send_stream(s, i, count, spec["in_flight"], stats, None)
                for i, s in enumerate(connected[:senders])
            )
        )
    )
    # Until every delivery is in, or none has come for 30 s (a lost one).
    progress = (stats.deliveries, time.monotonic())
    while stats.deliveries < expected and time.monotonic() - progress[1] < 30:
        await asyncio.sleep(0.002)
        if stats.deliveries != progress[0]:
            progress = (stats.deliveries, time.monotonic())
    server1, reactor1 = cpu_seconds(pid), cpu_seconds(pid, pid)
    syscalls = counted(counting) if counting else None
    wall = time.monotonic() - wall0
    own1 = resource.getrusage(resource.RUSAGE_SELF)
    own = (own1.ru_utime - own0.ru_utime) + (own1.ru_stime - own0.ru_stime)
    rss = load.rss_kib(pid)
    closed = sum(1 for client in connected if not client.open)
    for client in connected:
        client.transport.close()
    seconds = (stats.last_delivery - stats.first_send) / 1e9
    server_cpu = server1 - server0
    return {
        "rooms": len(urls),
        "clients": clients,
        "senders": senders,
        "messages": senders * count,
        "acked": acked,
        "deliveries": stats.deliveries,
        "deliveries_expected": expected,
        "closed_early": closed,
        "deliveries_per_s": round(stats.deliveries / seconds, 1) if seconds else None,
        "fanout_ms": load.percentiles(stats.fanout_ns),
        "server_cpu_s": round(server_cpu, 3),
        "cpu_us_per_delivery": round(server_cpu / stats.deliveries * 1e6, 3)
        if stats.deliveries
        else None,
        # The reactor's thread; the rest is the stores' threads (journal
        # writes and fsyncs, one pool per loaded room) and the loaders'.
        "server_reactor_cpu_s": round(reactor1 - reactor0, 3),
        "server_cpu_us_per_message": round(server_cpu / (senders * count) * 1e6, 1),
        "server_cpu_share": round(server_cpu / wall, 2),
        "generator_cpu": round(own / wall, 2),
        "server_rss_kib": rss,
        "server_syscalls": syscalls,
    }


async def join(url: str, name: str) -> tuple[int, dict]:
    """Connect, register, bare `get`: the classic client's join; returns the
    nanoseconds from before the connect to the reply, and the reply."""
    stats = load.Stats()
    started = load.now_ns()
    client = await load.connect(url, stats)
    registered = await client.request({"type": "name", "name": name})
    if registered.get("status") is not True:
        raise RuntimeError(f"registration refused: {registered}")
    client.frame(load.get_frame(0))
    reply = await client.replies.get()
    took = load.now_ns() - started
    client.transport.close()
    return took, orjson.loads(reply)


async def drive_joins(spec: dict) -> dict:
    """Each room joined once while idle (not loaded), one after another, then
    each again while it is still loaded."""
    result: dict = {}
    for label in ("first", "loaded"):
        times, sizes = [], set()
        for i, url in enumerate(spec["urls"]):
            took, reply = await join(url, f"{label}{i}")
            if reply.get("status") is not True:
                raise RuntimeError(f"get refused: {reply}")
            sizes.add(len(reply["data"]["message"]))
            times.append(took)
        result[label] = {"ns": times, "messages": sorted(sizes)}
    return result


def drive(spec: dict) -> dict:
    run = {"traffic": drive_traffic, "joins": drive_joins}[spec["mode"]]
    return asyncio.run(run(spec))


def generator(spec: dict) -> dict:
    output = subprocess.run(
        [PYTHON, __file__, "--drive", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if output.returncode:
        raise RuntimeError(f"generator failed: {output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


# -- the measuring side -------------------------------------------------------


def history(messages: int) -> list[bytes]:
    """Entries as chatbox stores them (id, name, content, v2 timestamp and
    its `time`), one second apart, ending now."""
    end = int(time.time())
    entries = []
    for i in range(1, messages + 1):
        second = end - messages + i
        stamp = time.strftime(clock.TIMESTAMP_FORMAT, time.localtime(second))
        content = f"message number {i}, with some ordinary text in it"
        entry = wire.history_entry(i, f"user{i % 97}", content, stamp, second * 1000)
        entries.append(codec.encode_compact(entry))
    return entries


def prefill_rooms(workdir: str, rooms: int, messages: int, prefix: str) -> list[str]:
    """`rooms` rooms of `messages` each in workdir's data.rooms/, written by
    chatbox's own writer, as it leaves a room's file when it folds; copies,
    not links, so every room is its own file."""
    folder = Path(workdir) / "data.rooms"
    folder.mkdir()
    first = folder / f"{prefix}0000.json"
    entries = history(messages)
    datafile.write_array(str(first), entries, len(entries))
    names = [f"{prefix}{i:04d}" for i in range(rooms)]
    for name in names[1:]:
        shutil.copyfile(first, folder / f"{name}.json")
    return names


def start(workdir: str) -> compare.Server:
    return compare.Server("chatbox", workdir, *ROOMS)


def healthz(server: compare.Server) -> dict:
    url = server.url.replace("ws://", "http://") + "/healthz"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def check(result: dict, server: compare.Server) -> dict:
    """A run that lost a message or a delivery measures nothing."""
    lost = None
    if result["acked"] != result["messages"]:
        lost = f"{result['messages'] - result['acked']} sends not acked"
    elif result["deliveries"] != result["deliveries_expected"]:
        lost = (
            f"{result['deliveries']} deliveries of {result['deliveries_expected']}"
            f" ({result['closed_early']} clients closed early)"
        )
    if lost:
        log = server.log.read_text()[-3000:]
        raise RuntimeError(f"{lost}; the server's log ends:\n{log}")
    return result


def many_rooms(size: dict, rounds: int, scratch: str) -> dict:
    """Target 1: start-up over 1,000 stored rooms, RSS then and with 50 busy."""
    template = tempfile.mkdtemp(dir=scratch)
    names = prefill_rooms(
        template, size["stored_rooms"], size["stored_messages"], "room"
    )
    runs = []
    for _ in range(rounds):
        workdir = tempfile.mkdtemp(dir=scratch)
        shutil.copytree(Path(template) / "data.rooms", Path(workdir) / "data.rooms")
        server = start(workdir)
        at_start = server.rss_mib()
        active = names[: size["active_rooms"]]
        try:
            traffic = generator(
                {
                    "mode": "traffic",
                    "urls": [f"{server.url}/{name}" for name in active],
                    "clients": size["active_rooms"] * size["active_clients"],
                    "senders": size["active_rooms"],
                    "messages": size["active_messages"],
                    "in_flight": 2,
                    "pid": server.pid,
                }
            )
            rooms = healthz(server)["rooms"]
        finally:
            server.stop()
        check(traffic, server)
        runs.append(
            {
                "seconds_to_listening": server.startup_s,
                "rss_start_mib": at_start,
                "rss_active_mib": traffic["server_rss_kib"] / 1024,
                "loaded": rooms["loaded"],
            }
        )
    median = lambda key: round(statistics.median(r[key] for r in runs), 2)  # noqa: E731
    return {
        "stored_rooms": size["stored_rooms"],
        "stored_messages": size["stored_messages"],
        "stored_mib": round(
            sum(f.stat().st_size for f in (Path(template) / "data.rooms").iterdir())
            / 2**20,
            1,
        ),
        "active_rooms": size["active_rooms"],
        "active_clients": size["active_rooms"] * size["active_clients"],
        "seconds_to_listening": median("seconds_to_listening"),
        "seconds_to_listening_max": round(
            max(r["seconds_to_listening"] for r in runs), 2
        ),
        "rss_start_mib": median("rss_start_mib"),
        "rss_active_mib": median("rss_active_mib"),
        "rss_active_max_mib": round(max(r["rss_active_mib"] for r in runs), 1),
        "loaded_while_active": max(r["loaded"] for r in runs),
    }


def first_joins(size: dict, rounds: int, scratch: str) -> dict:
    """Target 2: connect to `get` reply, idle rooms against loaded ones."""
    template = tempfile.mkdtemp(dir=scratch)
    names = prefill_rooms(template, size["join_rooms"], size["join_history"], "big")
    times: dict[str, list[int]] = {"first": [], "loaded": []}
    sizes: set[int] = set()
    for _ in range(rounds):
        workdir = tempfile.mkdtemp(dir=scratch)
        shutil.copytree(Path(template) / "data.rooms", Path(workdir) / "data.rooms")
        server = start(workdir)
        try:
            joins = generator(
                {"mode": "joins", "urls": [f"{server.url}/{name}" for name in names]}
            )
        finally:
            server.stop()
        for label in times:
            times[label] += joins[label]["ns"]
            sizes.update(joins[label]["messages"])
    if sizes != {size["join_history"]}:
        raise RuntimeError(f"bare gets returned {sizes} messages")
    return {
        "history": size["join_history"],
        "joins": len(times["first"]),
        "first": load.percentiles(times["first"]),
        "loaded": load.percentiles(times["loaded"]),
    }


def layouts(size: dict) -> dict[str, dict]:
    rooms, per_room = size["rooms"], size["per_room"]
    clients = rooms * per_room
    return {
        # One sender in each room: clients 0..rooms-1 are one per room.
        "rooms": {"rooms": rooms, "clients": clients, "senders": rooms},
        # The same clients, the same senders (and messages each), one room.
        "one": {"rooms": 1, "clients": clients, "senders": rooms},
        # One of the rooms alone, its sender sending what all of them did.
        "control": {
            "rooms": 1,
            "clients": per_room,
            "senders": 1,
            "messages": size["messages"] * rooms,
        },
    }


def delivery_cost(size: dict, rounds: int, scratch: str, syscalls: bool) -> dict:
    """Target 3: server CPU per delivery, rooms against one room, alternated;
    with `syscalls`, the server's system calls counted too (needs perf)."""
    runs: dict[str, list[dict]] = {name: [] for name in layouts(size)}
    for _ in range(rounds):
        for name, layout in layouts(size).items():
            server = start(tempfile.mkdtemp(dir=scratch))
            urls = [f"{server.url}/r{i:03d}" for i in range(layout["rooms"])]
            try:
                result = generator(
                    {
                        "mode": "traffic",
                        "urls": urls,
                        "clients": layout["clients"],
                        "senders": layout["senders"],
                        "messages": layout.get("messages", size["messages"]),
                        "in_flight": size["in_flight"],
                        "pid": server.pid,
                        "syscalls": syscalls,
                    }
                )
            finally:
                server.stop()
            runs[name].append(check(result, server))
    figures: dict = {}
    for name, results in runs.items():

        def pick(key: str, results: list[dict] = results) -> float:
            return round(statistics.median(r[key] for r in results), 3)

        figures[name] = {
            "rooms": results[0]["rooms"],
            "clients": results[0]["clients"],
            "senders": results[0]["senders"],
            "messages": results[0]["messages"],
            "deliveries": results[0]["deliveries"],
            "deliveries_per_s": pick("deliveries_per_s"),
            "cpu_us_per_delivery": pick("cpu_us_per_delivery"),
            "cpu_us_per_delivery_runs": [r["cpu_us_per_delivery"] for r in results],
            "server_cpu_s": pick("server_cpu_s"),
            "server_reactor_cpu_s": pick("server_reactor_cpu_s"),
            "server_cpu_us_per_message": pick("server_cpu_us_per_message"),
            "server_cpu_share": pick("server_cpu_share"),
            "fanout_p50_ms": round(
                statistics.median(r["fanout_ms"]["p50"] for r in results), 3
            ),
            "generator_cpu": max(r["generator_cpu"] for r in results),
        }
        if syscalls:
            per = {"delivery": "deliveries", "message": "messages"}
            figures[name]["syscalls"] = {
                f"{call}_per_{unit}": round(
                    statistics.median(
                        r["server_syscalls"].get(call, 0) / r[per[unit]]
                        for r in results
                    ),
                    4,
                )
                for call, unit in (
                    ("sendto", "delivery"),
                    ("epoll_ctl", "delivery"),
                    ("fsync", "message"),
                    ("futex", "message"),
                )
            }
    cost = {name: figures[name]["cpu_us_per_delivery"] for name in figures}
    figures["ratio"] = round(cost["rooms"] / cost["one"], 2)
    figures["ratio_to_control"] = round(cost["rooms"] / cost["control"], 2)
    return figures


TARGETS = ("many", "joins", "delivery")


def run(options: argparse.Namespace) -> dict:
    size = QUICK if options.quick else FULL
    scratch = tempfile.mkdtemp(prefix="chatbox-bench-rooms-")
    only = options.only.split(",") if options.only else TARGETS
    unknown = sorted(set(only) - set(TARGETS))
    if unknown:
        raise SystemExit(
            f"--only: no target {', '.join(unknown)} (of {', '.join(TARGETS)})"
        )
    figures: dict = {"cores": os.cpu_count(), "rounds": options.rounds}
    figures["quick"] = options.quick
    # Other work on the machine moves every figure here: the load average
    # before and after is printed with them.
    figures["load_average_before"] = round(os.getloadavg()[0], 2)
    try:
        if "many" in only:
            figures["many_rooms"] = many_rooms(size, options.rounds, scratch)
        if "joins" in only:
            figures["first_join"] = first_joins(size, options.rounds, scratch)
        if "delivery" in only:
            figures["delivery"] = delivery_cost(
                size, options.rounds, scratch, options.syscalls
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    figures["load_average_after"] = round(os.getloadavg()[0], 2)
    return figures


def many_rows(many: dict) -> list[tuple[str, str, str, str]]:
    return [
        (
            f"1. start-up with {many['stored_rooms']:,} rooms of "
            f"{many['stored_messages']:,} messages ({many['stored_mib']} MiB)",
            f"{many['seconds_to_listening']} s",
            f"max {many['seconds_to_listening_max']} s; "
            f"RSS at start {many['rss_start_mib']} MiB",
            "< 2 s",
        ),
        (
            f"1. RSS with {many['active_rooms']} rooms active "
            f"({many['active_clients']} clients, each room sending)",
            f"{many['rss_active_mib']} MiB",
            f"max {many['rss_active_max_mib']} MiB; "
            f"{many['loaded_while_active']} rooms loaded",
            "< 200 MB",
        ),
    ]


def join_rows(joins: dict) -> list[tuple[str, str, str, str]]:
    return [
        (
            f"2. first join of an idle room, {joins['history']:,}-message history: "
            "connect to bare get reply, p50 / p99",
            f"{joins['first']['p50']} / {joins['first']['p99']} ms",
            f"max {joins['first']['max']} ms over {joins['joins']} rooms",
            "< 100 ms",
        ),
        (
            "2. the same rooms joined again, loaded, p50 / p99",
            f"{joins['loaded']['p50']} / {joins['loaded']['p99']} ms",
            f"max {joins['loaded']['max']} ms",
            "",
        ),
    ]


def delivery_rows(cost: dict) -> list[tuple[str, str, str, str]]:
    rooms, one, control = cost["rooms"], cost["one"], cost["control"]

    def per(layout: dict) -> str:
        return (
            f"{layout['deliveries_per_s']:,.0f} deliveries/s, "
            f"{layout['cpu_us_per_delivery']} µs CPU/delivery"
        )

    rows = [
        (
            f"3. {rooms['rooms']} rooms x {rooms['clients'] // rooms['rooms']} "
            f"clients, {rooms['senders']} senders",
            per(rooms),
            f"ratio to one room {cost['ratio']}",
            "<= 1.25",
        ),
        (
            f"3. the same {one['clients']:,} clients and {one['senders']} "
            "senders in one room",
            per(one),
            "",
            "",
        ),
        (
            f"3. control: one room of {control['clients']} clients, 1 sender "
            f"({control['messages']:,} messages)",
            per(control),
            f"{rooms['rooms']} rooms / this: {cost['ratio_to_control']}",
            "",
        ),
    ]
    for name, layout in ((f"{rooms['rooms']} rooms", rooms), ("one room", one)):
        rows.append(
            (
                f"3. {name}: server CPU per message",
                f"{layout['server_cpu_us_per_message']:,.0f} µs",
                f"{layout['deliveries'] // layout['messages']:,} deliveries each",
                "",
            )
        )
        calls = layout.get("syscalls")
        if calls:
            rows.append(
                (
                    f"3. {name}: send() per delivery, fsync per message",
                    f"{calls['sendto_per_delivery']:.3f}, "
                    f"{calls['fsync_per_message']:.3f}",
                    f"epoll_ctl per delivery {calls['epoll_ctl_per_delivery']:.3f}",
                    "",
                )
            )
    return rows


def table(f: dict) -> str:
    rows = []
    if "many_rooms" in f:
        rows += many_rows(f["many_rooms"])
    if "first_join" in f:
        rows += join_rows(f["first_join"])
    if "delivery" in f:
        rows += delivery_rows(f["delivery"])
    return compare.markdown(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a small run (CI)")
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="count the server's system calls in target 3 (Linux perf)",
    )
    parser.add_argument(
        "--only",
        metavar="TARGETS",
        help=f"a comma list of targets to run, of {', '.join(TARGETS)}",
    )
    parser.add_argument("--drive", metavar="JSON", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.drive:
        print(json.dumps(drive(json.loads(options.drive))), flush=True)
        return
    figures = run(options)
    print(table(figures))
    notes = (
        f"\n{figures['cores']} cores; load average (1 min) before / after: "
        f"{figures['load_average_before']} / {figures['load_average_after']}"
    )
    if "delivery" in figures:
        cost = figures["delivery"]
        notes += "; generator CPU share (max): " + ", ".join(
            f"{k} {cost[k]['generator_cpu']}" for k in layouts(QUICK)
        )
    print(notes)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
