"""Load generator for chatbox (and bench/stick.py): one JSON line per run.

    python bench/load.py ws://127.0.0.1:9000 --mode fanout --clients 200 \\
        --senders 10 --messages 200 --in-flight 8 [--pid PID]
    python bench/load.py URL --mode paced --senders 10 --rate 1000 --seconds 5
    python bench/load.py URL --mode idle --clients 2000 --pid SERVER_PID
    python bench/load.py URL --mode crowd --clients 1000   # then stdin commands
    python bench/load.py URL --mode gets --limit 50 --count 1000
    python bench/load.py URL --mode gets --limit 0 --count 50    # bare gets
    python bench/load.py URL --mode paced --getters 10   # + 10 bare-get loops
    python bench/load.py --prefill data.json --history 100000
    python bench/load.py ws://127.0.0.1:9001,ws://127.0.0.1:9002 --mode fanout

Several comma-separated URLs (the nodes of a cluster) share the clients out
in turn, senders included.

Modes:
- fanout: every client registers; `senders` of them send `messages` each,
  keeping `in-flight` unacknowledged. Reports sends/s (acks), deliveries/s
  (receive events counted at all clients), fan-out latency (send to receipt
  at the other clients) and ack latency, p50/p99/max in ms.
- paced: the same, but the senders post at a total of `rate` messages/s.
- idle: connect and register `clients` and do nothing; with --pid, reports
  the server's RSS growth per connection.
- crowd: connect and register `clients` (as `student0000`...), print
  `{"ready": N}`, then obey one command per line of stdin: `churn K` closes
  the first K still open and registers K more (`back0000`...), then prints
  `{"ready": N}` again; `quit` (or the end of stdin) ends it. For tests of
  a browser among a big class (tests/test_browser_real_size.py), since
  test clients in the test's own reactor would be the slowest part.
- gets: one client asks `get` with `limit` over and over; latency. With
  `--limit 0` the `get` is bare, as the classic client sends it.
- `--getters N` (fanout and paced): N more clients ask bare `get`s one
  after another for as long as the run lasts, as a crowd of classic
  clients reconnecting would; their latency and reply size are reported,
  and their events are not counted as deliveries.

It is built to stay out of the way: a bare asyncio WebSocket client (frames
parsed by hand, no JSON parsing of deliveries; the send time travels in the
content and is found with a byte search), client frames masked with the
all-zero key RFC 6455 allows. Its own CPU use is in every report
(`generator_cpu`): near 1.0 means it, not the server, set the pace.
"""

import argparse
import asyncio
import base64
import json
import os
import resource
import statistics
import sys
import time
from urllib.parse import urlparse

import orjson

MARK = b'"content":"~'


def now_ns() -> int:
    return time.monotonic_ns()  # one clock for every process on this machine


def percentiles(values: list[int]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    values.sort()
    pick = lambda q: round(values[min(len(values) - 1, int(q * len(values)))] / 1e6, 3)  # noqa: E731
    return {"p50": pick(0.50), "p99": pick(0.99), "max": round(values[-1] / 1e6, 3)}


class Stats:
    def __init__(self) -> None:
        self.deliveries = 0
        self.fanout_ns: list[int] = []
        self.ack_ns: list[int] = []
        self.first_send = 0
        self.last_delivery = 0
        self.last_ack = 0


class Client(asyncio.Protocol):
    def __init__(self, stats: Stats, handshake: bytes) -> None:
        self.stats = stats
        self.handshake = handshake
        self.buffer = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.replies: asyncio.Queue = asyncio.Queue()
        self.open = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.handshake)

    def connection_lost(self, exc) -> None:
        self.open = False
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during handshake"))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[:12])
            del buffer[: end + 4]
            if b" 101" not in status:
                self.upgraded.set_exception(ConnectionError(status.decode()))
                return
            self.open = True
            self.upgraded.set_result(self)
        offset, size = 0, len(buffer)
        while size - offset >= 2:
            length = buffer[offset + 1] & 0x7F
            start = offset + 2
            if length == 126:
                if size - offset < 4:
                    break
                length = int.from_bytes(buffer[offset + 2 : offset + 4], "big")
                start = offset + 4
            elif length == 127:
                if size - offset < 10:
                    break
                length = int.from_bytes(buffer[offset + 2 : offset + 10], "big")
                start = offset + 10
            end = start + length
            if end > size:
                break
            opcode = buffer[offset] & 0x0F
            if opcode == 1:
                self.text(bytes(buffer[start:end]))
            elif opcode == 9:  # ping: answer with a pong
                self.frame(bytes(buffer[start:end]), opcode=10)
            offset = end
        del buffer[:offset]

    def text(self, payload: bytes) -> None:
        if payload.startswith(b'{"type":"receive"'):
            stats = self.stats
            stats.deliveries += 1
            stats.last_delivery = now_ns()
            at = payload.find(MARK)
            if at >= 0:
                sent = int(
                    payload[at + len(MARK) : payload.index(b"~", at + len(MARK))]
                )
                stats.fanout_ns.append(stats.last_delivery - sent)
        elif not payload.startswith(b'{"type":"ping"'):
            self.replies.put_nowait(payload)

    def frame(self, payload: bytes, opcode: int = 1) -> None:
        length = len(payload)
        if length < 126:
            header = bytes((0x80 | opcode, 0x80 | length))
        elif length < 65536:
            header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
        # The all-zero masking key: legal, and it leaves the payload as is.
        self.transport.write(header + b"\0\0\0\0" + payload)

    async def request(self, message: dict) -> dict:
        self.frame(orjson.dumps(message))
        return orjson.loads(await self.replies.get())


async def connect(url: str, stats: Stats) -> Client:
    parsed = urlparse(url)
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (
        f"GET {parsed.path or '/'} HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    ssl = None
    if parsed.scheme == "wss":
        import ssl as ssl_module

        ssl = ssl_module.create_default_context()
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: Client(stats, handshake), parsed.hostname, parsed.port or 80, ssl=ssl
    )
    return await client.upgraded


async def connect_many(
    url: str, count: int, stats: Stats, prefix: str, digits: int = 0, first: int = 0
) -> list[Client]:
    urls = url.split(",")
    clients: list[Client] = []
    for start in range(0, count, 100):  # in waves, not a thundering herd
        wave = await asyncio.gather(
            *(
                connect(urls[i % len(urls)], stats)
                for i in range(start, min(count, start + 100))
            )
        )
        clients.extend(wave)
    replies = await asyncio.gather(
        *(
            c.request({"type": "name", "name": f"{prefix}{first + i:0{digits}d}"})
            for i, c in enumerate(clients)
        )
    )
    refused = [r for r in replies if r.get("status") is not True]
    if refused:
        raise RuntimeError(f"{len(refused)} registrations refused, e.g. {refused[0]}")
    return clients


def rss_kib(pid: int | None) -> int | None:
    if not pid:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


async def send_stream(
    sender: Client,
    index: int,
    count: int,
    in_flight: int,
    stats: Stats,
    interval: float | None,
) -> int:
    """Send `count` messages; returns how many were acknowledged."""
    acked = 0
    window = asyncio.Semaphore(in_flight)
    sent_at: list[int] = []

    async def collect() -> None:
        nonlocal acked
        for _ in range(count):
            reply = orjson.loads(await sender.replies.get())
            received = now_ns()
            stats.ack_ns.append(received - sent_at.pop(0))
            stats.last_ack = received
            acked += reply.get("status") is True
            window.release()

    collector = asyncio.ensure_future(collect())
    started = time.monotonic()
    for seq in range(count):
        if interval is not None:
            delay = started + seq * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await window.acquire()
        stamp = now_ns()
        sent_at.append(stamp)
        sender.frame(b'{"type":"send","content":"~%d~%d.%d"}' % (stamp, index, seq))
    await collector
    return acked


def get_frame(limit: int) -> bytes:
    return b'{"type":"get"}' if limit <= 0 else b'{"type":"get","limit":%d}' % limit


async def keep_getting(client: Client, done: asyncio.Event, results: dict) -> None:
    """Bare gets back to back until `done`: each waits for its reply."""
    while not done.is_set():
        started = now_ns()
        client.frame(get_frame(0))
        reply = await client.replies.get()
        results["latencies"].append(now_ns() - started)
        results["bytes"] = len(reply)


async def run_traffic(options: argparse.Namespace) -> dict:
    stats = Stats()
    clients = await connect_many(options.url, options.clients, stats, "load")
    getters = (
        await connect_many(options.url, options.getters, Stats(), "getter")
        if options.getters
        else []
    )
    got: dict = {"latencies": [], "bytes": 0}
    done = asyncio.Event()
    getting = [asyncio.ensure_future(keep_getting(g, done, got)) for g in getters]
    rss_before = rss_kib(options.pid)
    senders = clients[: options.senders]
    interval = None
    in_flight = options.in_flight
    if options.mode == "paced":
        interval = options.senders / options.rate
        in_flight = 1_000_000
        count = int(options.rate * options.seconds / options.senders)
    else:
        count = options.messages
    expected = options.senders * count * (options.clients - 1)
    await asyncio.sleep(0.2)  # let the join events of the setup arrive...
    stats.deliveries = 0  # ...and count only the messages
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.monotonic()
    stats.first_send = now_ns()
    acked = sum(
        await asyncio.gather(
            *(
                send_stream(s, i, count, in_flight, stats, interval)
                for i, s in enumerate(senders)
            )
        )
    )
    deadline = time.monotonic() + 30
    while stats.deliveries < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    done.set()
    await asyncio.gather(*getting)
    wall = time.monotonic() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    send_seconds = (stats.last_ack - stats.first_send) / 1e9
    delivery_seconds = (stats.last_delivery - stats.first_send) / 1e9
    for client in clients + getters:
        client.transport.close()
    return {
        "mode": options.mode,
        "getters": options.getters,
        "getter_gets": len(got["latencies"]),
        "getter_reply_bytes": got["bytes"],
        "getter_get_ms": percentiles(got["latencies"]),
        "clients": options.clients,
        "senders": options.senders,
        "messages_per_sender": count,
        "in_flight": None if interval else in_flight,
        "target_rate": options.rate if interval else None,
        "acked": acked,
        "deliveries": stats.deliveries,
        "deliveries_expected": expected,
        "sends_per_s": round(acked / send_seconds, 1) if send_seconds else None,
        "deliveries_per_s": round(stats.deliveries / delivery_seconds, 1)
        if delivery_seconds
        else None,
        "fanout_ms": percentiles(stats.fanout_ns),
        "ack_ms": percentiles(stats.ack_ns),
        "generator_cpu": round(cpu / wall, 2),
        "server_rss_kib_before": rss_before,
        "server_rss_kib_after": rss_kib(options.pid),
    }


async def run_idle(options: argparse.Namespace) -> dict:
    stats = Stats()
    rss_before = rss_kib(options.pid)
    clients = await connect_many(options.url, options.clients, stats, "idle")
    await asyncio.sleep(1)
    rss_after = rss_kib(options.pid)
    for client in clients:
        client.transport.close()
    per = (
        (rss_after - rss_before) / options.clients if rss_before and rss_after else None
    )
    return {
        "mode": "idle",
        "clients": len(clients),
        "server_rss_kib_before": rss_before,
        "server_rss_kib_after": rss_after,
        "rss_kib_per_connection": round(per, 2) if per is not None else None,
    }


async def run_crowd(options: argparse.Namespace) -> dict:
    stats = Stats()
    clients = await connect_many(options.url, options.clients, stats, "student", 4)
    print(json.dumps({"ready": len(clients)}), flush=True)
    loop = asyncio.get_running_loop()
    back = 0
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        command = line.split()
        if not command or command[0] == "quit":
            break
        if command[0] == "churn":
            count = int(command[1])
            leaving, clients = clients[:count], clients[count:]
            for client in leaving:
                client.transport.close()
            fresh = await connect_many(options.url, count, stats, "back", 4, back)
            back += count
            clients.extend(fresh)
            print(json.dumps({"ready": len(clients)}), flush=True)
    for client in clients:
        client.transport.close()
    return {"mode": "crowd", "clients": len(clients)}


async def run_gets(options: argparse.Namespace) -> dict:
    stats = Stats()
    [client] = await connect_many(options.url, 1, stats, "reader")
    latencies = []
    size = 0
    for _ in range(options.count):
        started = now_ns()
        client.frame(get_frame(options.limit))
        reply = await client.replies.get()
        latencies.append(now_ns() - started)
        size = len(reply)
    client.transport.close()
    return {
        "mode": "gets",
        "limit": options.limit,
        "count": options.count,
        "reply_bytes": size,
        "get_ms": percentiles(latencies),
        "get_mean_ms": round(statistics.fmean(latencies) / 1e6, 3),
    }


def prefill(path: str, history: int) -> dict:
    """Write a chatbox history of `history` messages (chunked: no huge lists)."""
    with open(path, "wb") as f:
        f.write(b"[")
        for start in range(0, history, 10_000):
            chunk = b",\n".join(
                orjson.dumps(
                    {
                        "id": i,
                        "name": f"user{i % 97}",
                        "content": f"message number {i}, with some ordinary text in it",
                        "timestamp": "24/11/2026, 10:00:00",
                    }
                )
                for i in range(start + 1, min(history, start + 10_000) + 1)
            )
            f.write(b"\n" if start == 0 else b",\n")
            f.write(chunk)
        f.write(b"\n]\n")
    return {
        "mode": "prefill",
        "path": path,
        "history": history,
        "bytes": os.path.getsize(path),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="chatbox load generator")
    parser.add_argument("url", nargs="?")
    parser.add_argument(
        "--mode", choices=("fanout", "paced", "idle", "gets", "crowd"), default="fanout"
    )
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--limit", type=int, default=50, help="0: a bare get")
    parser.add_argument("--getters", type=int, default=0)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--pid", type=int, help="server pid, for its RSS")
    parser.add_argument("--prefill", metavar="PATH", help="write a data.json and exit")
    parser.add_argument("--history", type=int, default=100_000)
    options = parser.parse_args()
    if options.prefill:
        result = prefill(options.prefill, options.history)
    elif not options.url:
        parser.error("a ws:// or wss:// URL is needed")
    else:
        modes = {"idle": run_idle, "gets": run_gets, "crowd": run_crowd}
        run = modes.get(options.mode, run_traffic)
        result = asyncio.run(run(options))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
