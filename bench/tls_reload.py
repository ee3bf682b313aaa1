"""What a certificate reload costs, and what it costs the reactor around it.

    python bench/tls_reload.py [--loads 20] [--handshakes 400]

First, `load_pair` (read both files, parse, check the key, build the
OpenSSL context: what runs on a pool thread at each SIGHUP or
`chatbox-admin tls-reload`) for the key types Let's Encrypt issues, with a
two-certificate fullchain: median and worst milliseconds.

Second, the reactor's gaps between the ticks of a 5 ms timer while
`ServedCertificate.reload` runs back to back for half a second, for each key
type: the read is on a thread, but a library that holds the GIL stalls the
reactor anyway (cryptography's RSA key check did: 600 ms per 4096-bit key,
130 ms per 2048-bit one, before load_pair skipped it).

Then a real TLS listener (ServedCertificate, as tap builds it) in this
process, and `--handshakes` TLS connections made one after another to it:
each one's handshake time, first with no reload, then with a reload every
50 ms throughout (the files alternating between two certificates). Prints
a Markdown table, then one JSON line.
"""

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.protocol import Factory, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatbox.endpoints import ServedCertificate, load_pair
from tests.certificates import CA, install

KEYS = {
    "EC P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "RSA 2048": lambda: rsa.generate_private_key(65537, 2048),
    "RSA 4096": lambda: rsa.generate_private_key(65537, 4096),
}


def load_times(folder: Path, ca: CA, loads: int) -> dict[str, list[float]]:
    found = {}
    for kind, make in KEYS.items():
        leaf = ca.issue(7, key=make())
        cert, key = folder / f"{kind}.pem", folder / f"{kind}.key"
        cert.write_bytes(leaf.cert_pem + ca.cert_pem)
        key.write_bytes(leaf.key_pem)
        times = []
        for _ in range(loads):
            started = time.perf_counter()
            load_pair(str(cert), str(key))
            times.append((time.perf_counter() - started) * 1000)
        found[kind] = times
    return found


class Hello(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"hi")


class Once(Protocol):
    def __init__(self) -> None:
        self.done: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.done.called:
            self.done.callback(None)


async def handshakes(port: int, ca: CA, count: int) -> list[float]:
    options = ca.client_options()
    times = []
    for _ in range(count):
        endpoint = wrapClientTLS(
            options, TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        )
        started = time.perf_counter()
        protocol = await connectProtocol(endpoint, Once())
        await protocol.done  # the server's first bytes: the handshake is over
        times.append((time.perf_counter() - started) * 1000)
        protocol.transport.abortConnection()
    return times


async def reactor_gaps(folder: Path, ca: CA, kind: str) -> list[float]:
    """The reactor's gaps between 5 ms ticks while reloads run back to
    back for half a second."""
    leaf = ca.issue(8, key=KEYS[kind]())
    cert, key = folder / "gap.pem", folder / "gap.key"
    install(leaf, cert, key)
    served = ServedCertificate.load(str(cert), str(key))
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append((now - last[0]) * 1000)
        last[0] = now

    loop = task.LoopingCall(tick)
    loop.start(0.005)
    until = time.perf_counter() + 0.5
    while time.perf_counter() < until:
        await served.reload("bench")
    loop.stop()
    return gaps


async def run(options: argparse.Namespace) -> dict:
    folder = Path(tempfile.mkdtemp())
    ca = CA()
    loads = load_times(folder, ca, options.loads)
    gaps = {kind: await reactor_gaps(folder, ca, kind) for kind in KEYS}
    cert, key = folder / "fullchain.pem", folder / "privkey.pem"
    pairs = [ca.issue(100), ca.issue(101)]
    install(pairs[0], cert, key)
    served = ServedCertificate.load(str(cert), str(key))
    port = reactor.listenSSL(
        0, Factory.forProtocol(Hello), served, interface="127.0.0.1"
    )
    number = port.getHost().port
    quiet = await handshakes(number, ca, options.handshakes)
    reloads = [0]
    running = [True]

    async def reload_forever() -> None:
        while running[0]:
            # The next pair is written only once the last reload has read
            # its files: a reload between two renames would see half a pair.
            install(pairs[reloads[0] % 2], cert, key)
            await served.reload("bench")
            reloads[0] += 1
            await task.deferLater(reactor, 0.05, lambda: None)

    reloading = ensureDeferred(reload_forever())
    busy = await handshakes(number, ca, options.handshakes)
    running[0] = False
    await reloading
    await port.stopListening()
    return {
        "loads": loads,
        "gaps": gaps,
        "quiet": quiet,
        "busy": busy,
        "reloads": reloads[0],
    }


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[max(0, math.ceil(len(ordered) * 0.99) - 1)], 3),
        "max_ms": round(ordered[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--handshakes", type=int, default=400)
    options = parser.parse_args()
    result: dict = {}

    def go() -> Deferred:
        done = ensureDeferred(run(options))
        done.addCallback(result.update)
        done.addBoth(lambda _: reactor.stop())
        return done

    reactor.callWhenRunning(go)
    reactor.run()
    figures = {
        "load_pair": {k: summary(v) for k, v in result["loads"].items()},
        "reactor gap": {k: summary(v) for k, v in result["gaps"].items()},
        "handshake, no reload": summary(result["quiet"]),
        f"handshake, {result['reloads']} reloads meanwhile": summary(result["busy"]),
    }
    print("| what | median ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- |")
    for kind, row in figures["load_pair"].items():
        print(
            f"| load_pair, {kind} + 1 intermediate | {row['median_ms']} | "
            f"{row['p99_ms']} | {row['max_ms']} |"
        )
    for kind, row in figures["reactor gap"].items():
        print(
            f"| reactor gap (5 ms timer), reloading {kind} | "
            f"{row['median_ms']} | {row['p99_ms']} | {row['max_ms']} |"
        )
    for what, row in list(figures.items())[2:]:
        print(f"| {what} | {row['median_ms']} | {row['p99_ms']} | {row['max_ms']} |")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
