"""`chatbox-redis`: move history between a data.json and a cluster's Redis.

    chatbox-redis import --redis redis://HOST:PORT/DB data.json
    chatbox-redis export --redis redis://HOST:PORT/DB data.json [--force]

Import is for moving a single-process chat onto a cluster: it takes
data.json (and any journal beside it, as start-up would) into an empty
Redis, keeping every message's id, so clients that caught up by id carry on.
It reserves the ids first, so nodes already running while it works give new
messages ids after the imported ones. It refuses a Redis that already has a
history: merging two histories has no right answer.

Export writes the cluster's history as a v2-readable data.json, by the same
atomic, fsync'd replace the single-process server uses; it will not replace
a history file that has messages unless told to with --force.
"""

import argparse
import os
import sys
from typing import Any

from twisted.internet import task, threads
from twisted.internet.defer import Deferred

from chatbox.chat.room import RoomError
from chatbox.cluster.address import RedisAddress, parse_redis_url
from chatbox.cluster.keys import Keys
from chatbox.cluster.link import RedisLink
from chatbox.local import datafile

__all__ = ["main"]

BATCH = 2000
CONNECT_TIMEOUT = 10
_KEYS = Keys.under()  # the keys every node uses (tap sets no other prefix)

# Reserve ids 1..ARGV[1] for imported history, only if Redis has no history.
_RESERVE = b"""
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('ZCARD', KEYS[2]) > 0 then
  return redis.call('ZCARD', KEYS[2])
end
redis.call('SET', KEYS[1], ARGV[1])
return -1
"""


class TransferError(Exception):
    """Why nothing (more) was done; printed as one line."""


async def _connect(reactor: Any, address: RedisAddress) -> RedisLink:
    link = RedisLink(address, reactor, timeout=30, name="redis")
    link.start()
    try:
        await link.when_up().addTimeout(CONNECT_TIMEOUT, reactor)
    except Exception:
        await link.stop()
        raise TransferError(f"cannot reach {address}") from None
    return link


async def _import(link: RedisLink, loaded: datafile.Loaded) -> str:
    if not loaded.ids:
        return "nothing to import: the history file is empty"
    last = loaded.ids[-1]
    found = await link.eval(_RESERVE, [_KEYS.msgid, _KEYS.history], [last])
    if found != -1:
        raise TransferError(
            f"{link.address} already has a history ({found} messages); nothing imported"
        )
    for start in range(0, len(loaded.ids), BATCH):
        pairs: list[object] = []
        for message_id, entry in zip(
            loaded.ids[start : start + BATCH],
            loaded.entries[start : start + BATCH],
            strict=True,
        ):
            pairs += [message_id, entry]
        await link.execute("ZADD", _KEYS.history, *pairs)
    return (
        f"imported {len(loaded.ids)} messages into {link.address} "
        f"(ids {loaded.ids[0]}..{last})"
    )


async def _export(link: RedisLink, path: str) -> str:
    entries: list[bytes] = []
    low = "-inf"
    while True:
        page = await link.execute(
            "ZRANGE", _KEYS.history, low, "+inf", "BYSCORE", "WITHSCORES",
            "LIMIT", 0, BATCH,
        )  # fmt: skip
        if not page:
            break
        entries += page[0::2]
        low = f"({int(float(page[-1]))}"
    await threads.deferToThread(datafile.write_array, path, entries, len(entries))
    return f"exported {len(entries)} messages from {link.address} to {path}"


def _has_history(path: str) -> bool:
    try:
        return bool(datafile.load(path).ids)
    except datafile.HistoryFileError:
        return os.path.exists(path)  # Damaged: not ours to overwrite either.


async def _run(reactor: Any, args: argparse.Namespace, work: Any) -> None:
    link = await _connect(reactor, args.redis)
    try:
        if args.command == "import":
            said = await _import(link, work)
        else:
            said = await _export(link, args.file)
    except RoomError as e:
        raise TransferError(f"{args.redis}: {e}") from None
    finally:
        await link.stop()
    print(said)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="chatbox-redis",
        description="Move chat history between a data.json and a chatbox "
        "cluster's Redis.",
    )
    parser.add_argument("command", choices=("import", "export"))
    parser.add_argument("file", help="the history file (data.json)")
    parser.add_argument(
        "--redis", required=True, help="redis://[:PASSWORD@]HOST:PORT/DB"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="export: replace a history file that already has messages",
    )
    args = parser.parse_args(argv)
    try:
        args.redis = parse_redis_url(args.redis)
    except ValueError as e:
        parser.error(f"--redis: {e}")

    work: Any = None
    try:
        # Held until exit: a running server's files are neither read half-way
        # through a fold nor replaced under it.
        args.file = datafile.history_path(args.file)
        datafile.HistoryLock(args.file, advice="stop it first").claim()
        if args.command == "import":
            work = datafile.load(args.file)  # Before the reactor: it blocks.
        elif not args.force and _has_history(args.file):
            raise TransferError(
                f"{args.file} already holds a history; use --force to replace it"
            )
    except (TransferError, datafile.HistoryFileError) as e:
        sys.exit(f"chatbox-redis: {e}")
    except OSError as e:
        sys.exit(f"chatbox-redis: {e.filename}: {e.strerror}")

    def run(reactor: Any) -> Deferred:
        done = Deferred.fromCoroutine(_run(reactor, args, work))

        def failed(failure: Any) -> None:
            failure.trap(TransferError)
            print(f"chatbox-redis: {failure.value}", file=sys.stderr)
            raise SystemExit(1)

        return done.addErrback(failed)

    task.react(run)


if __name__ == "__main__":
    main()
