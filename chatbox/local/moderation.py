"""A single process's moderation rules on disk: one JSON file.

`data.json`'s rules are `data.moderation.json`: the whole snapshot of
chatbox.chat.moderation.Moderation, rewritten after each order by a
temporary file, fsync, rename and a directory fsync, on a thread, so a
crash leaves the old rules or the new ones, never half of either. The
rules are few (bans, mutes, patterns), so a rewrite is small; orders that
arrive while one is written share the next.

The file belongs to whoever holds data.json's lock (chatbox.local.datafile),
so a second server cannot write it. A file that cannot be read stops
start-up with its name: starting without the bans an operator made would
let everyone they banned back in.
"""

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import implementer

from chatbox.chat.moderation import IModerationStore, Order
from chatbox.local import datafile
from chatbox.wire import codec

__all__ = ["LocalModeration", "ModerationFileError", "moderation_path"]


class ModerationFileError(Exception):
    """The rules file cannot be read; the message names it."""


def moderation_path(data: str) -> str:
    """data.json -> data.moderation.json, beside it."""
    base = data[: -len(".json")] if data.endswith(".json") else data
    return base + ".moderation.json"


def read_rules(path: str) -> dict[str, Any]:
    """The stored snapshot, or empty rules if there is no file (blocking:
    start-up only)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ModerationFileError(f"cannot read {path}: {e.strerror}") from None
    try:
        rules = codec.decode(raw)
    except codec.DecodeError as e:
        raise ModerationFileError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(rules, dict):
        raise ModerationFileError(f"{path} does not hold a JSON object")
    return rules


def write_rules(path: str, rules: dict[str, Any]) -> None:
    """Replace the file durably (blocking: a thread). Readable by the
    server's user only: it names addresses and operators' reasons."""
    datafile.replace_durably(path, codec.encode(rules) + b"\n", 0o600)


@implementer(IModerationStore)
class LocalModeration:
    log = Logger()

    def __init__(self, path: str, snapshot: Callable[[], dict[str, Any]]) -> None:
        """`snapshot` gives the rules to write (Moderation.snapshot), read
        on the reactor thread after each order is applied."""
        self.path = path
        self._rules = read_rules(path)  # start-up: before anything listens
        self._snapshot = snapshot
        self._apply: Callable[[Order], None] = lambda order: None
        self._writing: Deferred[None] | None = None
        self._waiting: list[Deferred[None]] = []  # for the next write

    def load(self) -> "Deferred[dict[str, Any]]":
        return succeed(self._rules)

    def start(self, apply: Callable[[Order], None]) -> None:
        self._apply = apply

    def submit(self, order: Order) -> "Deferred[None]":
        self._apply(order)
        if order.get("op") == "kick":
            return succeed(None)  # nothing to keep
        done: Deferred[None] = Deferred()
        self._waiting.append(done)
        if self._writing is None:
            self._write()
        return done

    def _write(self) -> None:
        waiting, self._waiting = self._waiting, []
        rules = self._snapshot()
        self._writing = deferToThread(write_rules, self.path, rules)

        def settled(result: object) -> None:
            # Waiters first, while this write still counts as the one under
            # way: whatever they submit queues for the next write, and only
            # one write (one temporary file) is ever out at a time.
            for done in waiting:
                done.callback(None) if result is None else done.errback(result)
            self._writing = None
            if self._waiting:
                self._write()

        self._writing.addBoth(settled)

    def close(self) -> "Deferred[None]":
        if self._writing is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting.append(waiter)
        return waiter.addErrback(lambda _: None)
