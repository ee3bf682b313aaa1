"""Soak test: many connections, churn, chat; then check nothing was lost.

    python bench/soak.py                      # starts its own server
    python bench/soak.py --connections 2000 --churners 300 --duration 120

Holds N idle registered connections; has C churners connect, register,
rename and leave over and over; has K chatters post at a paced total rate;
and at the end reports the server's peak memory, every error seen, and
whether every acknowledged message is in the history. Clients are spread
over loopback addresses 127.0.0.1..127.0.0.10, so the server's default
per-address limit (200) holds as it would for real clients.

Not part of the test run: it takes minutes and most of this machine.
Prints one JSON line at the end.
"""

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import ProcessProtocol

# Idle clients fill 127.0.0.1-10 (200 each: the default per-address limit);
# churners and the final reader come from addresses of their own.
IDLE = [f"127.0.0.{i}" for i in range(1, 11)]
CHURN = ["127.0.0.11", "127.0.0.12"]
READER = ["127.0.0.13"]
errors: Counter[str] = Counter()
counts: Counter[str] = Counter()


class Client(WebSocketClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()
        self.waiting: list[defer.Deferred] = []

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        if message.get("type") == "receive":
            counts["deliveries"] += 1
        elif message.get("type") != "ping" and self.waiting:
            self.waiting.pop(0).callback(message)

    def onClose(self, wasClean: bool, code: int, reason: str) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake refused: {reason}"))
        for waiter in self.waiting:
            waiter.errback(ConnectionError(f"closed {code}"))
        self.waiting = []
        self.closed.callback(code)

    def request(self, message: dict) -> defer.Deferred:
        waiter = defer.Deferred()
        self.waiting.append(waiter)
        self.sendMessage(json.dumps(message).encode())
        return waiter.addTimeout(30, reactor)


async def connect(port: int, index: int, addresses: list[str]) -> Client:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}")
    factory.protocol = Client
    factory.setProtocolOptions(autoPingInterval=0)
    endpoint = TCP4ClientEndpoint(
        reactor, "127.0.0.1", port, bindAddress=(addresses[index % len(addresses)], 0)
    )
    client = await endpoint.connect(factory)
    return await client.opened.addTimeout(30, reactor)


async def expect(client: Client, message: dict, what: str) -> dict | None:
    try:
        reply = await client.request(message)
    except Exception as e:
        errors[f"{what}: {type(e).__name__}"] += 1
        return None
    if reply.get("status") is not True:
        errors[f"{what}: {reply.get('reason')}"] += 1
        return None
    return reply


async def churn(port: int, index: int, until: float, pause: float) -> None:
    cycle = 0
    # Churners start spread over one pause, not all at once.
    await task.deferLater(reactor, pause * (index % 97) / 97)
    while time.monotonic() < until:
        try:
            client = await connect(port, index, CHURN)
        except Exception as e:
            errors[f"churn connect: {e}"] += 1
            await task.deferLater(reactor, 1)
            continue
        name = f"churn{index}-{cycle}"
        if await expect(client, {"type": "name", "name": name}, "churn register"):
            await expect(client, {"type": "name", "name": name + "x"}, "churn rename")
        await task.deferLater(reactor, 0.5)
        if cycle % 2:
            client.transport.abortConnection()  # vanish, as a crashed browser
        else:
            client.sendClose(1000)
        await client.closed
        counts["churn cycles"] += 1
        cycle += 1
        await task.deferLater(reactor, pause)


async def chat(clients: list[Client], rate: float, until: float, acked: list) -> None:
    interval = 1 / rate
    turn = 0
    pending = []

    async def post(client: Client, text: str) -> None:
        reply = await expect(client, {"type": "send", "content": text}, "send")
        if reply:
            acked.append(reply["id"])

    while time.monotonic() < until:
        client = clients[turn % len(clients)]
        pending.append(defer.Deferred.fromCoroutine(post(client, f"soak {turn}")))
        counts["sent"] += 1
        turn += 1
        await task.deferLater(reactor, interval)
    await defer.DeferredList(pending)


class Server(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.port = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = re.search(rb"listening on ws://[\d.]+:(\d+)", self.output)
        if match and not self.port.called:
            self.port.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


def peak_rss_kib(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.M))
    return int(fields["VmHWM"]), int(fields["VmRSS"])


async def main(options: argparse.Namespace) -> dict:
    workdir = tempfile.mkdtemp(prefix="chatbox-soak-")
    server = Server()
    twistd = str(Path(sys.executable).parent / "twistd")
    process = reactor.spawnProcess(
        server,
        twistd,
        [
            twistd,
            "-n",
            "--pidfile=",
            "chatbox",
            "--port=tcp:0:interface=127.0.0.1",
            "--history-cap=10000000",
        ],
        env=dict(os.environ),
        path=workdir,
    )
    port = await server.port.addTimeout(60, reactor)
    rss_start = peak_rss_kib(process.pid)[1]
    try:
        idle = []
        for i in range(options.connections):
            try:
                client = await connect(port, i, IDLE)
            except Exception as e:
                errors[f"idle connect: {e}"] += 1
                continue
            if await expect(
                client, {"type": "name", "name": f"idle{i}"}, "idle register"
            ):
                idle.append(client)
        rss_held = peak_rss_kib(process.pid)[1]

        chatters = idle[: options.chatters]
        until = time.monotonic() + options.duration
        acked: list[int] = []
        started = time.monotonic()
        await defer.DeferredList(
            [defer.Deferred.fromCoroutine(chat(chatters, options.rate, until, acked))]
            + [
                defer.Deferred.fromCoroutine(churn(port, i, until, options.churn_pause))
                for i in range(options.churners)
            ]
        )
        elapsed = time.monotonic() - started

        reader = await connect(port, 0, READER)
        await expect(reader, {"type": "name", "name": "soak-reader"}, "reader register")
        history = await reader.request({"type": "get"})
        stored = {m["id"] for m in history["data"]["message"]}
        missing = [i for i in acked if i not in stored]
        online = len(history["data"]["online"])
        peak, rss_end = peak_rss_kib(process.pid)

    except BaseException:
        os.kill(process.pid, signal.SIGKILL)
        raise
    os.kill(process.pid, signal.SIGTERM)
    exit_code = await server.ended.addTimeout(60, reactor)
    unhandled = server.output.count(b"Unhandled") + server.output.count(b"Traceback")
    return {
        "connections_held": len(idle),
        "churners": options.churners,
        "churn_cycles": counts["churn cycles"],
        "duration_s": round(elapsed, 1),
        "messages_sent": counts["sent"],
        "messages_acked": len(acked),
        "deliveries": counts["deliveries"],
        "acked_missing_from_history": len(missing),
        "online_at_end": online,
        "server_rss_start_mib": round(rss_start / 1024, 1),
        "server_rss_holding_mib": round(rss_held / 1024, 1),
        "server_rss_end_mib": round(rss_end / 1024, 1),
        "server_peak_rss_mib": round(peak / 1024, 1),
        "server_errors_logged": unhandled,
        "server_exit_code": exit_code,
        "client_errors": dict(errors),
    }


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--churners", type=int, default=300)
    parser.add_argument("--chatters", type=int, default=50)
    parser.add_argument("--rate", type=float, default=10.0, help="messages/s, total")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds")
    parser.add_argument(
        "--churn-pause",
        type=float,
        default=15.0,
        help="seconds between a churner's cycles",
    )
    options = parser.parse_args()

    async def go(_reactor) -> None:
        print(json.dumps(await main(options)), flush=True)

    task.react(lambda r: defer.ensureDeferred(go(r)))


if __name__ == "__main__":
    run()
