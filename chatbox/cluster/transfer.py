"""`chatbox-redis`: move history between a data.json and a cluster's Redis.

    chatbox-redis import --redis redis://HOST:PORT/DB data.json [--room NAME]
    chatbox-redis export --redis redis://HOST:PORT/DB data.json [--room NAME] [--force]
    chatbox-redis import|export --redis ... data.json --with-rooms [--force]

Without --room, the default room (`/`); with it, room NAME (the name as in
its URL, folded as the server folds it). A named room imported is counted
among the cluster's rooms at once (even past --max-rooms: the operator
asked for it), so it exists before anyone joins.

--with-rooms moves every room at once, in the single-process layout (the
one `chatbox-admin backup` writes): data.json is the default room and
`data.rooms/NAME.json` room NAME. Import refuses before storing anything if
any of those rooms already has a history in Redis; export writes every room
of the cluster's `rooms` set. Messages keep their marks (announcement,
verified) both ways: the entries are moved as stored.

Import is for moving a single-process chat onto a cluster: it takes
data.json (and any journal beside it, as start-up would) into an empty
Redis, keeping every message's id, so clients that caught up by id carry on.
It reserves the ids first, so nodes already running while it works give new
messages ids after the imported ones. It refuses a Redis that already has a
history: merging two histories has no right answer.

Export writes the cluster's history as a v2-readable data.json, by the same
atomic, fsync'd replace the single-process server uses; it will not replace
a history file that has messages unless told to with --force.

Deleted messages leave gaps in the ids, on both sides, and their ids are
never handed out again: import reserves up to the highest id the history
files record (a deletion or a journal's mark may name one above the last
message), and export, when the cluster's newest messages were deleted,
starts the journal beside data.json with a mark saying how far ids went.
"""

import argparse
import os
import sys
from typing import Any

from twisted.internet import task, threads
from twisted.internet.defer import Deferred

from chatbox.chat.room import RoomError
from chatbox.chat.roomnames import DEFAULT, NotARoom, check_name
from chatbox.cluster.address import RedisAddress, parse_redis_url
from chatbox.cluster.keys import Keys
from chatbox.cluster.link import RedisLink
from chatbox.local import datafile
from chatbox.wire import codec

__all__ = ["main"]

BATCH = 2000
CONNECT_TIMEOUT = 10

# Reserve ids 1..ARGV[1] for imported history, only if the room has no
# history; a named room (ARGV[2]) is counted among the cluster's rooms.
_RESERVE = b"""
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('ZCARD', KEYS[2]) > 0 then
  return redis.call('ZCARD', KEYS[2])
end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('SADD', KEYS[3], ARGV[2])
end
return -1
"""


def _where(link: RedisLink, room: str) -> str:
    return f"{link.address}" + (f" (room {room})" if room else "")


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


async def _import(link: RedisLink, loaded: datafile.Loaded, room: str) -> str:
    if not loaded.ids:
        return "nothing to import: the history file is empty"
    keys = Keys.for_room(room)
    last = max(loaded.ids[-1], loaded.high)  # deleted newest: still used
    found = await link.eval(
        _RESERVE, [keys.msgid, keys.history, keys.rooms], [last, room]
    )
    if found != -1:
        raise TransferError(
            f"{_where(link, room)} already has a history ({found} messages); "
            "nothing imported"
        )
    for start in range(0, len(loaded.ids), BATCH):
        pairs: list[object] = []
        for message_id, entry in zip(
            loaded.ids[start : start + BATCH],
            loaded.entries[start : start + BATCH],
            strict=True,
        ):
            pairs += [message_id, entry]
        await link.execute("ZADD", keys.history, *pairs)
    return (
        f"imported {len(loaded.ids)} messages into {_where(link, room)} "
        f"(ids {loaded.ids[0]}..{loaded.ids[-1]})"
    )


async def _export(link: RedisLink, path: str, room: str) -> str:
    keys = Keys.for_room(room)
    entries: list[bytes] = []
    low = "-inf"
    while True:
        page = await link.execute(
            "ZRANGE", keys.history, low, "+inf", "BYSCORE", "WITHSCORES",
            "LIMIT", 0, BATCH,
        )  # fmt: skip
        if not page:
            break
        entries += page[0::2]
        low = f"({int(float(page[-1]))}"
    handed = int(await link.execute("GET", keys.msgid) or 0)
    kept = codec.decode(entries[-1])["id"] if entries else 0
    await threads.deferToThread(_write_export, path, entries, kept, handed)
    return f"exported {len(entries)} messages from {_where(link, room)} to {path}"


def _write_export(path: str, entries: list[bytes], kept: int, handed: int) -> None:
    """data.json; and when the cluster's newest messages were deleted (ids
    up to `handed` given, the newest kept is `kept`), a journal holding
    only the mark that keeps their ids from being handed out again."""
    datafile.write_array(path, entries, len(entries))
    if handed > kept:
        journal, old = datafile.journal_paths(path)
        temporary = journal + ".tmp"
        with open(temporary, "wb") as f:
            f.write(datafile.mark_record(kept, handed))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, journal)
        datafile.remove_durably(old)
        datafile.fsync_directory(journal)


def rooms_folder(path: str) -> str:
    """Where the single-process server keeps the named rooms of history file
    `path` (chatbox.local.rooms.rooms_folder, which this layer may not
    import)."""
    base = path[: -len(".json")] if path.endswith(".json") else path
    return base + ".rooms"


def _room_files(path: str) -> list[tuple[str, str]]:
    """(room, file) for every named room stored beside history file `path`."""
    folder = rooms_folder(path)
    try:
        listed = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    found = []
    for file in listed:
        if not file.endswith(".json"):
            continue  # journals, locks, sends
        try:
            name = check_name(file[: -len(".json")])
        except NotARoom:
            continue
        found.append((name, os.path.join(folder, file)))
    return found


async def _import_all(link: RedisLink, work: list[tuple[str, Any]]) -> str:
    """Every room of `work` ((room, Loaded)), or none if any has a history."""
    for room, _ in work:
        keys = Keys.for_room(room)
        found = await link.execute("ZCARD", keys.history)
        if found or await link.execute("EXISTS", keys.msgid):
            raise TransferError(
                f"{_where(link, room)} already has a history ({found} messages); "
                "nothing imported"
            )
    said = [await _import(link, loaded, room) for room, loaded in work]
    return "\n".join(said)


async def _export_all(link: RedisLink, path: str, force: bool) -> str:
    names = sorted(
        n.decode() for n in await link.execute("SMEMBERS", Keys.under().rooms)
    )
    targets = [(DEFAULT, path)] + [
        (name, os.path.join(rooms_folder(path), name + ".json")) for name in names
    ]
    await threads.deferToThread(_claim_all, [p for _, p in targets[1:]], force)
    return "\n".join([await _export(link, p, room) for room, p in targets])


def _claim_all(paths: list[str], force: bool) -> None:
    """Lock each room file to be written (kept until exit), refusing one
    that holds a history unless `force`."""
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        datafile.HistoryLock(path, advice="stop it first").claim()
        if not force and _has_history(path):
            raise TransferError(f"{path} already holds a history; use --force")


def _has_history(path: str) -> bool:
    try:
        return bool(datafile.load(path).ids)
    except datafile.HistoryFileError:
        return os.path.exists(path)  # Damaged: not ours to overwrite either.


async def _run(reactor: Any, args: argparse.Namespace, work: Any) -> None:
    link = await _connect(reactor, args.redis)
    try:
        if args.command == "import" and args.with_rooms:
            said = await _import_all(link, work)
        elif args.command == "import":
            said = await _import(link, work, args.room)
        elif args.with_rooms:
            said = await _export_all(link, args.file, args.force)
        else:
            said = await _export(link, args.file, args.room)
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
    parser.add_argument(
        "--room",
        default=DEFAULT,
        help="the room NAME (ws://HOST:PORT/NAME); default: the default room at /",
    )
    parser.add_argument(
        "--with-rooms",
        action="store_true",
        help="every room: FILE is the default room, FILE's .rooms folder "
        "(data.rooms/NAME.json) the named ones",
    )
    args = parser.parse_args(argv)
    if args.with_rooms and args.room:
        parser.error("--with-rooms moves every room: no --room with it")
    try:
        args.redis = parse_redis_url(args.redis)
    except ValueError as e:
        parser.error(f"--redis: {e}")
    if args.room:
        try:
            args.room = check_name(args.room)
        except NotARoom as e:
            parser.error(f"--room: {e}")

    work: Any = None
    try:
        # Held until exit: a running server's files are neither read half-way
        # through a fold nor replaced under it.
        args.file = datafile.history_path(args.file)
        datafile.HistoryLock(args.file, advice="stop it first").claim()
        if args.command == "import" and args.with_rooms:
            work = [(DEFAULT, datafile.load(args.file))]
            for room, path in _room_files(args.file):
                datafile.HistoryLock(path, advice="stop it first").claim()
                work.append((room, datafile.load(path)))
        elif args.command == "import":
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
