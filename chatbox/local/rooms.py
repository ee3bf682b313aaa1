"""A single process's named rooms: one history file each, in a folder.

Room NAME keeps its history exactly as the default room does (a v2 JSON
array with its journal, lock and send_ids beside it, chatbox.local.datafile),
in `NAME.json` inside the rooms folder: `--data` without its `.json`, plus
`.rooms` (data.json's rooms are in data.rooms/). Deriving the folder from
`--data` keeps two servers with different histories in one directory from
sharing rooms, and the default room's lock already keeps two servers off
one history.

Loading reads and checks a whole file, so it happens on a thread; so does
closing, through the store. A room that never held a message leaves no
files behind once unloaded, so joining a thousand made-up names fills no
disk.
"""

import contextlib
import os
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from chatbox.chat.retention import NO_RETENTION, RetentionPolicy
from chatbox.chat.room import IRoom
from chatbox.chat.roomnames import NotARoom, check_name
from chatbox.chat.rooms import IRoomMaker, Unloaded
from chatbox.local import datafile
from chatbox.local.room import LocalRoom
from chatbox.local.store import DEFAULT_FOLD_THRESHOLD, DurableStore
from chatbox.metrics import Metrics

__all__ = ["LocalRooms", "rooms_folder"]

SUFFIX = ".json"


def rooms_folder(data: str) -> str:
    """Where the rooms of history file `data` are kept."""
    base = data[: -len(SUFFIX)] if data.endswith(SUFFIX) else data
    return base + ".rooms"


def _files_of(path: str) -> list[str]:
    """Every file a room's history may leave (the lock last)."""
    journal, old = datafile.journal_paths(path)
    return [path, journal, old, datafile.sends_path(path), path + ".lock"]


@implementer(IRoomMaker)
class LocalRooms:
    def __init__(
        self,
        data: str,
        reactor: Any,
        fold_threshold: int = DEFAULT_FOLD_THRESHOLD,
        metrics: Metrics | None = None,
        retention: RetentionPolicy = NO_RETENTION,
    ) -> None:
        self.folder = rooms_folder(datafile.history_path(data))
        self.retention = retention
        self._reactor = reactor
        self._fold_threshold = fold_threshold
        self._metrics = metrics

    def path_of(self, name: str) -> str:
        return os.path.join(self.folder, name + SUFFIX)

    def stored(self) -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return found
        for entry in entries:
            stem, suffix, rest = entry.name.partition(SUFFIX)
            if not suffix or rest not in ("", ".journal"):
                continue
            try:
                name = check_name(stem)
            except NotARoom:
                continue  # not a room's file (the operator's, say)
            # Only the file path_of names: Class-7A.json or a folder called
            # class-7a.json is the operator's, and never loaded as the room.
            if name != stem or not entry.is_file():
                continue
            with contextlib.suppress(OSError):
                size = entry.stat().st_size
                if size == 0 and rest:  # an empty journal: no message
                    continue
                found[name] = max(
                    found.get(name) or 0, int(entry.stat().st_mtime * 1000)
                )
        return found

    def names(self) -> "Deferred[list[str]]":
        # One process's registry already knows every room it stores.
        return succeed([])

    def make(self, name: str) -> "Deferred[IRoom]":
        store = DurableStore(
            self.path_of(name), self._reactor, self._fold_threshold, self._metrics
        )
        room = LocalRoom(store, self._reactor.seconds)
        room.retention = self.retention.for_room(name)

        def load() -> LocalRoom:
            if not os.path.isdir(self.folder):
                os.makedirs(self.folder, exist_ok=True)
                datafile.fsync_directory(self.folder)
            store.load()
            room.restore_sends()
            store.claim()
            return room

        def started(loaded: LocalRoom) -> IRoom:
            loaded.start()
            return loaded

        return deferToThread(load).addCallback(started)

    def unload(self, name: str, room: IRoom) -> "Deferred[Unloaded]":
        return Deferred.fromCoroutine(self._unload(name, room))

    async def _unload(self, name: str, room: IRoom) -> Unloaded:
        # A room whose every message was deleted keeps its files: its
        # journal's mark keeps those ids from being handed out again.
        empty = room.message_count() == 0 and not (
            isinstance(room, LocalRoom) and room.store.ids_used
        )
        complete = bool(await room.close())
        if not (empty and complete):
            return Unloaded(complete, True)
        path = self.path_of(name)

        def forget() -> None:
            for file in _files_of(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(file)

        try:
            await deferToThread(forget)
        except OSError:
            return Unloaded(complete, True)
        return Unloaded(complete, False)

    def summary(self, name: str) -> "Deferred[tuple[int, int | None]]":
        # Nobody is online in a room this process has not loaded.
        return succeed((0, None))
