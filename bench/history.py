"""What export, backup, restore and import cost on a big history.

    python bench/history.py [--messages 100000] [--senders 8]

Writes a data.json of `--messages` messages (about 110 bytes each, names
taking turns among five, one in a 4-byte script) before starting a real
`twistd chatbox` with its admin API, then times, with `chatbox-admin` run
as a child as an operator runs it (its start-up included):

- export of the whole history, idle, then while `--senders` clients send
  as fast as their replies come back (the messages they had acknowledged
  are checked to be in the export);
- backup into a new folder while they send, and restore of it (offline);
- import of the v2 data.json itself into a new room.

Prints a Markdown table, then one JSON line.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, reactor, task

from tests.client import connect
from tests.history_ops import GOTHIC, Twistd, cli, messages, write_history


async def timed(admin: str | None, *args: str) -> float:
    started = time.monotonic()
    result = await cli(admin, *args)
    took = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"chatbox-admin {args[0]}: {result.stderr.decode()}")
    return took


async def bench(count: int, senders: int) -> dict:
    figures: dict = {"messages": count, "senders": senders}
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder) / "server"
        workdir.mkdir()
        write_history(
            workdir / "data.json",
            messages(count, ["alice", "bob", GOTHIC, "Zoë", "dan"]),
        )
        server = await Twistd.start(workdir, "--rooms=open")
        admin = server.admin
        out = Path(folder) / "all.jsonl"
        took = await timed(admin, "export", "-o", str(out))
        figures["export idle s"] = round(took, 2)
        figures["export idle lines/s"] = round(count / took)

        acked: list[tuple[float, str]] = []
        running = True

        async def send(client, who: int) -> None:
            n = 0
            while running:
                n += 1
                try:
                    reply = await client.say(f"load {who} {n}")
                except ConnectionError:
                    return  # aborted at the end
                if reply.get("status") is not True:
                    return
                acked.append((time.monotonic(), f"load {who} {n}"))

        clients = []
        for i in range(senders):
            client = await connect(server.url)
            await client.register(f"sender{i}")
            clients.append(client)
        loops = [
            defer.Deferred.fromCoroutine(send(c, i)) for i, c in enumerate(clients)
        ]
        await task.deferLater(reactor, 0.5, lambda: None)
        began = time.monotonic()
        before = len(acked)
        took = await timed(admin, "export", "-o", str(out))
        during = len(acked) - before
        with open(out, "rb") as f:
            contents = [json.loads(line)["content"] for line in f]
        lines = len(contents)
        contents = set(contents)
        missing = [
            text for when, text in acked if when < began and text not in contents
        ]
        figures["export under load s"] = round(took, 2)
        figures["export under load lines/s"] = round(lines / took)
        figures["sends acknowledged meanwhile/s"] = round(during / took)
        figures["acknowledged before, missing"] = len(missing)

        backup = Path(folder) / "backup"
        took = await timed(admin, "backup", str(backup))
        figures["backup under load s"] = round(took, 2)
        running = False
        for client in clients:
            client.abort()
        for loop in loops:
            await loop
        v2 = workdir / "data.json"
        took = await timed(admin, "import", str(v2), "--room", "copy")
        figures["import of the data.json s"] = round(took, 2)
        figures["import msgs/s"] = round(count / took)
        await server.child.kill()
        target = Path(folder) / "restored"
        target.mkdir()
        took = await timed(
            None, "restore", str(backup), "--data", str(target / "data.json")
        )
        figures["restore s"] = round(took, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--senders", type=int, default=8)
    options = parser.parse_args()
    result: dict = {}

    async def run() -> None:
        result.update(await bench(options.messages, options.senders))

    def done(_: object) -> None:
        reactor.stop()

    def failed(failure) -> None:
        failure.printTraceback()
        reactor.stop()

    reactor.callWhenRunning(
        lambda: defer.Deferred.fromCoroutine(run()).addCallbacks(done, failed)
    )
    reactor.run()
    print("| figure | value |\n|---|---|")
    for key, value in result.items():
        print(f"| {key} | {value} |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
