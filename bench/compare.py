"""Measure chatbox against its targets, side by side, in one run.

    python bench/compare.py [--rounds 3] [--quick]

Runs, each in fresh servers and temporary folders:
1. fan-out: 200 clients, 10 senders x 200 messages, 8 in flight; chatbox
   and the in-memory stick (bench/stick.py) in alternation; the ratio of
   median deliveries/s.
2. history-size independence: sends/s with an empty history and with a
   100,000-message one, in alternation; and `get` with `limit: 50` at
   1,000,000 stored messages, p99.
3. start-up with a 1,000,000-message data.json: time to listening, RSS.
4. memory: RSS growth per idle registered connection at 2,000.
5. latency: 200 clients, a paced total of 1,000 messages/s: fan-out p99.
6. the same while 10 more clients keep asking bare `get`s (as classic
   clients do on joining) of a 100,000-message history: fan-out p99.
7. one bare `get` at the history cap (10,000 of 100,000 messages).

The load generator (bench/load.py) runs as its own process; its CPU share
is printed with each figure. chatbox runs with durability on (fsync before
each acknowledgement) and with rate limiting off (--rate 0), since these
runs measure capacity, not abuse. Prints a Markdown table and, last, one
JSON line with everything.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
TWISTD = str(Path(sys.executable).parent / "twistd")
CHATBOX = [
    "--rate=0",
    "--ip-send-rate=0",
    "--ip-name-rate=0",
    "--json-ping=0",
    "--max-connections-per-ip=0",
    "--max-pending-per-ip=0",
    "--connection-rate=0",
    "--history-cap=10000000",
]


class Server:
    def __init__(self, kind: str, workdir: str, *extra: str) -> None:
        if kind == "chatbox":
            command = [
                TWISTD,
                "-n",
                "--pidfile=",
                "chatbox",
                "--port=tcp:0:interface=127.0.0.1",
                *CHATBOX,
                *extra,
            ]
        else:
            command = [PYTHON, str(HERE / "stick.py"), "0"]
        self.started = time.monotonic()
        # Logs go to a file: a pipe nobody reads would fill up and block the
        # server on its own logging (chatbox logs a line per message).
        self.log = Path(workdir) / "server.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=workdir, stdout=log, stderr=log
            )
        while True:
            match = re.search(r"listening on (ws://[\d.]+:\d+)", self.log.read_text())
            if match:
                self.url = match.group(1)
                break
            if self.process.poll() is not None or time.monotonic() - self.started > 300:
                raise RuntimeError(
                    f"{kind} did not start: {self.log.read_text()[-2000:]}"
                )
            time.sleep(0.01)
        self.startup_s = time.monotonic() - self.started
        self.pid = self.process.pid

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=120)


def load(url: str, *args: str, pid: int | None = None) -> dict:
    command = [PYTHON, str(HERE / "load.py"), url, *args]
    if pid:
        command += ["--pid", str(pid)]
    output = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def prefill(path: str, history: int) -> None:
    subprocess.run(
        [PYTHON, str(HERE / "load.py"), "--prefill", path, "--history", str(history)],
        check=True,
        capture_output=True,
    )


def fresh(kind: str, history_file: str | None = None, *extra: str) -> Server:
    workdir = tempfile.mkdtemp(prefix="chatbox-bench-")
    if history_file:
        os.link(history_file, os.path.join(workdir, "data.json"))
    return Server(kind, workdir, *extra)


def run(options: argparse.Namespace) -> dict:
    rounds = options.rounds
    figures: dict = {"cores": os.cpu_count(), "rounds": rounds}
    scratch = tempfile.mkdtemp(prefix="chatbox-bench-data-")
    big = 1_000_000 if not options.quick else 100_000
    mid = 100_000 if not options.quick else 20_000

    # 1. Fan-out, chatbox and the stick in alternation.
    fanout = [
        "--mode",
        "fanout",
        "--clients",
        "200",
        "--senders",
        "10",
        "--messages",
        "200",
        "--in-flight",
        "8",
    ]
    runs: dict[str, list[dict]] = {"chatbox": [], "stick": []}
    for _ in range(rounds):
        for kind in ("chatbox", "stick"):
            server = fresh(kind)
            runs[kind].append(load(server.url, *fanout))
            server.stop()
    median = lambda kind, key: statistics.median(r[key] for r in runs[kind])  # noqa: E731
    figures["fanout"] = {
        kind: {
            "deliveries_per_s": median(kind, "deliveries_per_s"),
            "sends_per_s": median(kind, "sends_per_s"),
            "fanout_p99_ms": statistics.median(
                r["fanout_ms"]["p99"] for r in runs[kind]
            ),
            "generator_cpu": max(r["generator_cpu"] for r in runs[kind]),
        }
        for kind in runs
    }
    figures["fanout"]["ratio"] = round(
        median("chatbox", "deliveries_per_s") / median("stick", "deliveries_per_s"), 2
    )

    # 2a. Sends/s with an empty history and with `mid` messages.
    mid_file = os.path.join(scratch, "mid.json")
    prefill(mid_file, mid)
    sends = [
        "--mode",
        "fanout",
        "--clients",
        "20",
        "--senders",
        "10",
        "--messages",
        "300",
        "--in-flight",
        "8",
    ]
    history_runs: dict[str, list[float]] = {"empty": [], "full": []}
    for _ in range(rounds):
        for label, history_file in (("empty", None), ("full", mid_file)):
            server = fresh("chatbox", history_file)
            history_runs[label].append(load(server.url, *sends)["sends_per_s"])
            server.stop()
    figures["history"] = {
        "messages": mid,
        "sends_per_s_empty": statistics.median(history_runs["empty"]),
        "sends_per_s_full": statistics.median(history_runs["full"]),
    }
    figures["history"]["ratio"] = round(
        figures["history"]["sends_per_s_full"]
        / figures["history"]["sends_per_s_empty"],
        2,
    )

    # 3 and 2b. Start-up and memory with `big` messages; get limit 50 there.
    big_file = os.path.join(scratch, "big.json")
    prefill(big_file, big)
    server = fresh("chatbox", big_file)
    figures["startup"] = {
        "messages": big,
        "file_mib": round(os.path.getsize(big_file) / 2**20, 1),
        "seconds_to_listening": round(server.startup_s, 2),
        "rss_mib": round(server.rss_mib(), 1),
    }
    gets = load(server.url, "--mode", "gets", "--limit", "50", "--count", "2000")
    figures["get_limit_50"] = {"messages": big, **gets["get_ms"]}
    server.stop()

    # 4. Memory per idle registered connection.
    server = fresh("chatbox")
    idle = load(server.url, "--mode", "idle", "--clients", "2000", pid=server.pid)
    figures["idle"] = {
        "connections": idle["clients"],
        "rss_kib_per_connection": idle["rss_kib_per_connection"],
    }
    server.stop()

    # 5. Latency at a paced 1,000 messages/s to 200 clients.
    paced_runs = []
    for _ in range(rounds):
        server = fresh("chatbox")
        paced_runs.append(
            load(
                server.url,
                "--mode",
                "paced",
                "--clients",
                "200",
                "--senders",
                "10",
                "--rate",
                "1000",
                "--seconds",
                "5",
            )
        )
        server.stop()
    figures["paced"] = {
        "rate": 1000,
        "fanout_p50_ms": statistics.median(r["fanout_ms"]["p50"] for r in paced_runs),
        "fanout_p99_ms": statistics.median(r["fanout_ms"]["p99"] for r in paced_runs),
        "fanout_max_ms": max(r["fanout_ms"]["max"] for r in paced_runs),
        "sends_per_s": statistics.median(r["sends_per_s"] for r in paced_runs),
        "generator_cpu": max(r["generator_cpu"] for r in paced_runs),
    }

    # 6 and 7. Bare gets at the default cap (10,000) of a `mid` history:
    # fan-out latency while 10 clients keep asking them, and one alone.
    cap = "--history-cap=10000"
    busy = ["--mode", "paced", "--clients", "200", "--senders", "10"]
    busy += ["--rate", "1000", "--seconds", "5", "--getters", "10"]
    busy_runs = []
    for _ in range(rounds):
        server = fresh("chatbox", mid_file, cap)
        busy_runs.append(load(server.url, *busy))
        server.stop()
    figures["paced_with_gets"] = {
        "history": mid,
        "getters": 10,
        "fanout_p50_ms": statistics.median(r["fanout_ms"]["p50"] for r in busy_runs),
        "fanout_p99_ms": statistics.median(r["fanout_ms"]["p99"] for r in busy_runs),
        "bare_gets": statistics.median(r["getter_gets"] for r in busy_runs),
        "bare_get_p99_ms": statistics.median(
            r["getter_get_ms"]["p99"] for r in busy_runs
        ),
        "generator_cpu": max(r["generator_cpu"] for r in busy_runs),
    }
    server = fresh("chatbox", mid_file, cap)
    bare = load(server.url, "--mode", "gets", "--limit", "0", "--count", "50")
    server.stop()
    figures["bare_get"] = {
        "history": mid,
        "reply_bytes": bare["reply_bytes"],
        **bare["get_ms"],
    }
    return figures


def table(f: dict) -> str:
    fan, hist, start, get, idle, paced = (
        f["fanout"],
        f["history"],
        f["startup"],
        f["get_limit_50"],
        f["idle"],
        f["paced"],
    )
    busy, bare = f["paced_with_gets"], f["bare_get"]
    rows = [
        (
            "1. fan-out deliveries/s, chatbox / stick",
            f"{fan['chatbox']['deliveries_per_s']:,.0f} / "
            f"{fan['stick']['deliveries_per_s']:,.0f}",
            f"ratio {fan['ratio']}",
            ">= 0.8",
        ),
        (
            f"2. sends/s, empty / {hist['messages']:,}-message history",
            f"{hist['sends_per_s_empty']:,.0f} / {hist['sends_per_s_full']:,.0f}",
            f"ratio {hist['ratio']}",
            ">= 0.9",
        ),
        (
            f"2. get limit 50 at {get['messages']:,} messages, p50 / p99",
            f"{get['p50']} / {get['p99']} ms",
            "",
            "p99 < 5 ms",
        ),
        (
            f"3. start-up with {start['messages']:,} messages "
            f"({start['file_mib']} MiB)",
            f"{start['seconds_to_listening']} s",
            f"RSS {start['rss_mib']} MiB",
            "< 5 s, < 400 MB",
        ),
        (
            f"4. RSS per idle registered connection ({idle['connections']:,})",
            f"{idle['rss_kib_per_connection']} KiB",
            "",
            "< 30 KiB",
        ),
        (
            "5. fan-out at 1,000 msg/s to 200 clients, p50 / p99",
            f"{paced['fanout_p50_ms']} / {paced['fanout_p99_ms']} ms",
            f"max {paced['fanout_max_ms']} ms",
            "p99 < 25 ms",
        ),
        (
            "6. the same while 10 clients keep asking bare gets of "
            f"{busy['history']:,} messages, p50 / p99",
            f"{busy['fanout_p50_ms']} / {busy['fanout_p99_ms']} ms",
            f"{busy['bare_gets']:,.0f} bare gets, p99 {busy['bare_get_p99_ms']} ms",
            "p99 < 50 ms",
        ),
        (
            f"7. one bare get at the cap (10,000 of {bare['history']:,}), p50 / p99",
            f"{bare['p50']} / {bare['p99']} ms",
            f"{bare['reply_bytes'] / 2**20:.2f} MiB",
            "",
        ),
    ]
    return markdown(rows)


def markdown(rows: list[tuple[str, str, str, str]]) -> str:
    """The figures' table, as the README shows them."""
    lines = ["| target | measured | | goal |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller histories")
    options = parser.parse_args()
    figures = run(options)
    print(table(figures))
    print(
        f"\n{figures['cores']} cores; generator CPU share (max): fan-out "
        f"{figures['fanout']['chatbox']['generator_cpu']} (chatbox), "
        f"{figures['fanout']['stick']['generator_cpu']} (stick), paced "
        f"{figures['paced']['generator_cpu']}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
