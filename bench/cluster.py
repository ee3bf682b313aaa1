"""Scale-out figures: one process, one Redis node, two Redis nodes, side by side.

    python bench/cluster.py [--rounds 3]

Starts its own redis-server (append-only file, fsync before every reply:
the same no-loss promise as a single process's fsync'd journal) and, in
alternation each round:

- single:   one chatbox process, history in data.json;
- 1 node:   one chatbox node with --redis (what Redis itself costs);
- 2 nodes:  two chatbox nodes with --redis, clients (senders too) shared
            out between them in turn.

On each it runs bench/load.py twice: fan-out (200 clients, 10 senders x 200
messages, 8 in flight: deliveries/s and sends/s at capacity) and paced
(200 clients, 1,000 messages/s in total for 5 s: fan-out latency). Prints a
Markdown table of the medians and, last, one JSON line with everything.

    python bench/cluster.py --rooms [--idle 0,100,1000] [--rounds 3]

Rooms on a cluster instead: two nodes with --rooms open, the same two runs
(paced at 200 messages/s, below capacity) in one busy room (/busy, clients
shared out between the nodes), while each node also has N idle rooms loaded
(one open connection in each, N in --idle): what following many quiet
rooms costs a busy one (chatbox.cluster.reader reads a room only when its
bell says it has news).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

from compare import Server, load

FANOUT = [
    "--mode", "fanout", "--clients", "200", "--senders", "10",
    "--messages", "200", "--in-flight", "8",
]  # fmt: skip
PACED = [
    "--mode", "paced", "--clients", "200", "--senders", "10",
    "--rate", "1000", "--seconds", "5",
]  # fmt: skip
# Rooms: the same, paced well below capacity, so what a busy room's latency
# pays for quiet rooms shows rather than the queueing of a saturated node.
ROOMS_PACED = [
    "--mode", "paced", "--clients", "200", "--senders", "10",
    "--rate", "200", "--seconds", "5",
]  # fmt: skip
# Small enough for the test suite to run, so this program cannot rot.
QUICK = ["--clients", "12", "--messages", "20", "--rate", "100", "--seconds", "1"]
TARGETS = ("single", "1 node", "2 nodes")


class Redis:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt install redis-server)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="chatbox-bench-redis-")
        command = [
            binary,
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", self.dir, "--save", "",
            "--appendonly", "yes", "--appendfsync", "always",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not self._answers():
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        """Redis' own CPU time so far (user + system): what a run cost the
        one Redis every node shares, however busy the machine is."""
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(b"INFO cpu\r\nQUIT\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        fields = dict(
            line.split(":", 1) for line in reply.decode().splitlines() if ":" in line
        )
        return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(b"FLUSHALL\r\n")
            assert s.recv(16).startswith(b"+OK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def start(target: str, redis: Redis) -> list[Server]:
    if target == "single":
        return [Server("chatbox", tempfile.mkdtemp(prefix="chatbox-bench-"))]
    redis.flush()
    return start_nodes(redis, 1 if target == "1 node" else 2)


def start_nodes(redis: Redis, count: int, *extra: str) -> list[Server]:
    nodes = [
        Server(
            "chatbox",
            tempfile.mkdtemp(prefix="chatbox-bench-"),
            f"--redis={redis.url}",
            *extra,
        )
        for _ in range(count)
    ]
    for node in nodes:  # listening is not enough: wait for the cluster
        deadline = time.monotonic() + 30
        while "joined the chat cluster" not in node.log.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError(f"node did not join: {node.log.read_text()}")
            time.sleep(0.02)
    return nodes


def run(rounds: int, quick: bool = False) -> dict:
    redis = Redis()
    results: dict[str, dict[str, list[dict]]] = {
        target: {"fanout": [], "paced": []} for target in TARGETS
    }
    try:
        for _ in range(rounds):
            for target in TARGETS:
                for mode, args in (("fanout", FANOUT), ("paced", PACED)):
                    nodes = start(target, redis)
                    url = ",".join(node.url for node in nodes)
                    extra = QUICK if quick else []
                    results[target][mode].append(load(url, *args, *extra))
                    for node in nodes:
                        node.stop()
    finally:
        redis.stop()
    figures: dict = {"cores": os.cpu_count(), "rounds": rounds}
    for target, runs in results.items():
        fanout, paced = runs["fanout"], runs["paced"]
        for run_ in fanout + paced:
            if run_["deliveries"] != run_["deliveries_expected"]:
                raise RuntimeError(f"{target}: deliveries missing: {run_}")
        median = statistics.median
        figures[target] = {
            "deliveries_per_s": median(r["deliveries_per_s"] for r in fanout),
            "sends_per_s": statistics.median(r["sends_per_s"] for r in fanout),
            "capacity_fanout_p99_ms": statistics.median(
                r["fanout_ms"]["p99"] for r in fanout
            ),
            "paced_fanout_p50_ms": statistics.median(
                r["fanout_ms"]["p50"] for r in paced
            ),
            "paced_fanout_p99_ms": statistics.median(
                r["fanout_ms"]["p99"] for r in paced
            ),
            "generator_cpu": max(r["generator_cpu"] for r in fanout),
        }
    return figures


def hold_rooms(nodes: list, count: int) -> list[socket.socket]:
    """One open WebSocket in each of `count` rooms on every node: the rooms
    stay loaded (followed) while the sockets are held."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    for node in nodes:
        host, port = node.url.removeprefix("ws://").split(":")
        for i in range(count):
            connection = socket.create_connection((host, int(port)))
            connection.sendall(
                f"GET /idle-{i} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += connection.recv(4096)
            if b" 101 " not in answer.split(b"\r\n", 1)[0]:
                raise RuntimeError(f"idle room {i} refused: {answer!r}")
            held.append(connection)
    return held


def run_rooms(rounds: int, idle: list[int], quick: bool = False) -> dict:
    redis = Redis()
    results: dict[int, dict[str, list[dict]]] = {
        count: {"fanout": [], "paced": []} for count in idle
    }
    try:
        for _ in range(rounds):
            for count in idle:
                for mode, args in (("fanout", FANOUT), ("paced", ROOMS_PACED)):
                    redis.flush()
                    nodes = start_nodes(redis, 2, "--rooms=open", "--max-rooms=2100")
                    held = hold_rooms(nodes, count)
                    url = ",".join(f"{node.url}/busy" for node in nodes)
                    extra = QUICK if quick else []
                    before = redis.cpu_seconds()
                    result = load(url, *args, *extra)
                    result["redis_cpu_us_per_send"] = round(
                        (redis.cpu_seconds() - before) * 1e6 / result["acked"], 1
                    )
                    results[count][mode].append(result)
                    for connection in held:
                        connection.close()
                    for node in nodes:
                        node.stop()
    finally:
        redis.stop()
    figures: dict = {"cores": os.cpu_count(), "rounds": rounds, "idle": {}}
    median = statistics.median
    for count, runs in results.items():
        fanout, paced = runs["fanout"], runs["paced"]
        for run_ in fanout + paced:
            if run_["deliveries"] != run_["deliveries_expected"]:
                raise RuntimeError(f"{count} idle rooms: deliveries missing: {run_}")
        figures["idle"][count] = {
            "deliveries_per_s": median(r["deliveries_per_s"] for r in fanout),
            "sends_per_s": median(r["sends_per_s"] for r in fanout),
            "paced_fanout_p50_ms": median(r["fanout_ms"]["p50"] for r in paced),
            "paced_fanout_p99_ms": median(r["fanout_ms"]["p99"] for r in paced),
            "redis_cpu_us_per_send": median(r["redis_cpu_us_per_send"] for r in fanout),
            "paced_redis_cpu_us_per_send": median(
                r["redis_cpu_us_per_send"] for r in paced
            ),
        }
    return figures


def rooms_table(figures: dict) -> str:
    idle = figures["idle"]
    base = idle[min(idle)]
    lines = [
        "| idle rooms loaded per node | deliveries/s (busy room) | vs fewest "
        "| sends/s | fan-out p50 / p99 at 200 msg/s "
        "| Redis CPU per message, at capacity / at 200 msg/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for count, f in idle.items():
        lines.append(
            f"| {count:,} | {f['deliveries_per_s']:,.0f} "
            f"| {f['deliveries_per_s'] / base['deliveries_per_s']:.2f} "
            f"| {f['sends_per_s']:,.0f} "
            f"| {f['paced_fanout_p50_ms']} / {f['paced_fanout_p99_ms']} ms "
            f"| {f['redis_cpu_us_per_send']} / {f['paced_redis_cpu_us_per_send']} us |"
        )
    return "\n".join(lines)


def table(figures: dict) -> str:
    base = figures["single"]
    lines = [
        "| target | deliveries/s | vs single | sends/s | fan-out p99 at capacity "
        "| fan-out p50 / p99 at 1,000 msg/s | generator CPU |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for target in TARGETS:
        f = figures[target]
        lines.append(
            f"| {target} | {f['deliveries_per_s']:,.0f} "
            f"| {f['deliveries_per_s'] / base['deliveries_per_s']:.2f} "
            f"| {f['sends_per_s']:,.0f} | {f['capacity_fanout_p99_ms']} ms "
            f"| {f['paced_fanout_p50_ms']} / {f['paced_fanout_p99_ms']} ms "
            f"| {f['generator_cpu']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument(
        "--rooms", action="store_true", help="one busy room beside idle ones"
    )
    parser.add_argument("--idle", default="0,100,1000", help="idle rooms per node")
    options = parser.parse_args()
    if options.rooms:
        idle = [int(count) for count in options.idle.split(",")]
        figures = run_rooms(options.rounds, idle, options.quick)
        print(rooms_table(figures))
    else:
        figures = run(options.rounds, options.quick)
        print(table(figures))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
