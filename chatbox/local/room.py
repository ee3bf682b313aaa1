"""The room of a single chatbox process: ARNS in memory, history in data.json.

Everything but writing history happens on the reactor thread, so claims and
renames are atomic and their Deferreds have fired before they are returned.
Events go to this process's connections directly.
"""

from collections.abc import Callable, Hashable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from chatbox.chat.arns import NameTaken, Registry
from chatbox.chat.room import Deliver, IRoom
from chatbox.local.store import DurableStore
from chatbox.wire import messages

__all__ = ["LocalRoom"]


def _nobody(event: messages.Message, exclude: Hashable | None) -> None:
    pass


@implementer(IRoom)
class LocalRoom:
    def __init__(self, store: DurableStore) -> None:
        self.store = store
        self.where = store.path
        self.registry = Registry()
        self._deliver: Deliver = _nobody

    @property
    def healthy(self) -> bool:
        return self.store.healthy

    def attach(self, deliver: Deliver, lost: Callable[[list[Any]], None]) -> None:
        # Nothing here can take a nickname away from a live connection.
        self._deliver = deliver

    def start(self) -> None:
        self.store.start()

    def name_of(self, owner: Hashable) -> str | None:
        return self.registry.name_of(owner)

    def audience(self) -> Iterable[Hashable]:
        return self.registry.owners()

    def registered_count(self) -> int:
        return len(self.registry)

    def message_count(self) -> int:
        return len(self.store.history)

    def claim(self, owner: Hashable, name: str, timestamp: str) -> "Deferred[None]":
        try:
            self.registry.claim(owner, name)
        except NameTaken as taken:
            return fail(taken)
        self._deliver(messages.joined(name, timestamp), owner)
        return succeed(None)

    def rename(self, owner: Hashable, name: str, timestamp: str) -> "Deferred[str]":
        try:
            old = self.registry.rename(owner, name)
        except NameTaken as taken:
            return fail(taken)
        self._deliver(messages.renamed(old, name, timestamp), owner)
        return succeed(old)

    def release(self, owner: Hashable, timestamp: str) -> str | None:
        name = self.registry.release(owner)
        if name is not None:
            self._deliver(messages.left(name, timestamp), owner)
        return name

    def post(
        self, owner: Hashable, name: str, content: str, timestamp: str
    ) -> "Deferred[int]":
        stored = self.store.append(name, content, timestamp)

        def durable(message_id: int) -> int:
            self._deliver(messages.posted(name, content, timestamp, message_id), owner)
            return message_id

        return stored.addCallback(durable)

    def page(
        self, limit: int, before: int | None, after: int | None, max_bytes: int = 0
    ) -> "Deferred[tuple[list[bytes], list[str]]]":
        entries = self.store.history.page(limit, before, after, max_bytes)
        return succeed((entries, self.registry.online()))

    def health(self) -> dict[str, Any]:
        return {"persistence": "ok" if self.store.healthy else "failing"}

    def flush(self) -> "Deferred[None]":
        return self.store.flush()

    def close(self) -> "Deferred[bool]":
        return Deferred.fromCoroutine(self.store.close())
