"""A smoke run of the benchmark programs, so they cannot rot.

Asserts that they run and report consistent numbers, never how fast:
figures come from bench/compare.py, on a quiet machine.
"""

import json
import os
import sys
from pathlib import Path

from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from chatbox.local import datafile
from tests.redis_server import require_redis

BENCH = Path(__file__).resolve().parent.parent / "bench"


async def bench(script: str, *args: str) -> dict:
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        [str(BENCH / script), *args],
        env=dict(os.environ),
        reactor=reactor,
    )
    assert code == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


@ensureDeferred
async def test_fanout_run_counts_every_delivery(server):
    result = await bench(
        "load.py",
        server.url,
        "--mode",
        "fanout",
        "--clients",
        "6",
        "--senders",
        "2",
        "--messages",
        "25",
        "--in-flight",
        "4",
        "--pid",
        str(os.getpid()),
    )
    assert result["acked"] == 50
    assert result["deliveries"] == result["deliveries_expected"] == 2 * 25 * 5
    assert result["sends_per_s"] > 0 and result["deliveries_per_s"] > 0
    for key in ("fanout_ms", "ack_ms"):
        assert 0 <= result[key]["p50"] <= result[key]["p99"] <= result[key]["max"]
    assert 0 < result["generator_cpu"] < 4
    assert result["server_rss_kib_after"] > 0
    assert len(server.factory.room.store.history) == 50


@ensureDeferred
async def test_paced_idle_and_get_runs(server):
    paced = await bench(
        "load.py",
        server.url,
        "--mode",
        "paced",
        "--clients",
        "4",
        "--senders",
        "2",
        "--rate",
        "40",
        "--seconds",
        "1",
    )
    assert paced["acked"] == 40 and paced["deliveries"] == 40 * 3
    idle = await bench(
        "load.py",
        server.url,
        "--mode",
        "idle",
        "--clients",
        "20",
        "--pid",
        str(os.getpid()),
    )
    assert idle["clients"] == 20 and idle["rss_kib_per_connection"] is not None
    gets = await bench(
        "load.py", server.url, "--mode", "gets", "--limit", "10", "--count", "20"
    )
    assert gets["count"] == 20 and gets["get_ms"]["p99"] > 0
    assert gets["reply_bytes"] > 100


@ensureDeferred
async def test_prefill_writes_a_history_chatbox_loads(tmp_path):
    path = tmp_path / "data.json"
    result = await bench("load.py", "--prefill", str(path), "--history", "25000")
    assert result["history"] == 25000
    loaded = datafile.load(str(path))
    assert loaded.ids == list(range(1, 25001))


@ensureDeferred
async def test_the_measuring_stick_speaks_what_the_generator_expects(tmp_path):
    from twisted.internet.protocol import ProcessProtocol

    class Stick(ProcessProtocol):
        def __init__(self):
            from twisted.internet.defer import Deferred

            self.url = Deferred()
            self.ended = Deferred()

        def outReceived(self, data):
            if not self.url.called and b"listening on" in data:
                self.url.callback(data.split(b"listening on ")[1].split()[0].decode())

        def processEnded(self, reason):
            self.ended.callback(None)

    stick = Stick()
    process = reactor.spawnProcess(
        stick,
        sys.executable,
        [sys.executable, str(BENCH / "stick.py"), "0"],
        env=dict(os.environ),
    )
    try:
        url = await stick.url.addTimeout(30, reactor)
        result = await bench(
            "load.py",
            url,
            "--mode",
            "fanout",
            "--clients",
            "4",
            "--senders",
            "2",
            "--messages",
            "10",
        )
        assert result["acked"] == 20 and result["deliveries"] == 20 * 3
    finally:
        process.signalProcess("TERM")
        await stick.ended


@ensureDeferred
async def test_cluster_benchmark_runs_every_target():
    require_redis()
    figures = await bench("cluster.py", "--rounds", "1", "--quick")
    # cluster.py itself fails if any delivery is missing.
    for target in ("single", "1 node", "2 nodes"):
        assert figures[target]["deliveries_per_s"] > 0
        assert figures[target]["paced_fanout_p99_ms"] > 0


@ensureDeferred
async def test_rooms_benchmark_runs_every_target():
    figures = await bench("rooms.py", "--rounds", "1", "--quick")
    # rooms.py itself fails if a send or a delivery is missing, or if a bare
    # get returned other than the whole history.
    many = figures["many_rooms"]
    for key in ("seconds_to_listening", "rss_start_mib", "rss_active_mib"):
        assert many[key] > 0
    assert many["loaded_while_active"] == many["active_rooms"] + 1  # and the default
    joins = figures["first_join"]
    assert joins["joins"] == 3 and joins["history"] == 2000
    for label in ("first", "loaded"):
        assert 0 < joins[label]["p50"] <= joins[label]["p99"] <= joins[label]["max"]
    cost = figures["delivery"]
    rooms, one, control = cost["rooms"], cost["one"], cost["control"]
    assert rooms["clients"] == one["clients"] == 20 and rooms["rooms"] == 5
    assert rooms["messages"] == one["messages"] == control["messages"] == 50
    # Each message reaches the rest of its room: 3 others, or 19 in one room.
    assert rooms["deliveries"] == control["deliveries"] == 50 * 3
    assert one["deliveries"] == 50 * 19
    assert cost["ratio"] > 0 and cost["ratio_to_control"] > 0
