"""The committed history in memory: ids and encoded entries, oldest first.

Entries are kept as the exact JSON bytes that go into data.json and into
`get` replies, so answering `get` is a slice and a join, never an encode.
Only the store changes it: appends once an entry is durable, removals when
an operator deletes messages.

A running total of entry sizes is kept beside the ids, so a page can be
bounded by bytes as well as by count with one bisection: a reply must never
grow with the length of the messages people happened to write.

Ids have gaps once messages are deleted; every lookup bisects the ids, so
none of them assumes an entry's index from its id.

Retention is applied by the reader, not here: `first_kept` finds the index
of the oldest entry a room's retention keeps (a binary search that decodes
only the entries it probes, chatbox.chat.retention.first_kept), and every
read takes that index as `first`, so expired entries leave `get` at once,
long before the purge removes them. Nothing about it is cached: the answer
moves with the clock and with every append.

The fold thread reads a prefix of `entries` while the reactor appends:
appends only ever extend the list, and a removal builds new lists and swaps
them in (copy-on-write), so a list the fold holds never changes under it.
"""

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from itertools import accumulate

from chatbox.chat.retention import Retention, first_kept
from chatbox.wire import codec

__all__ = ["History", "time_in"]


def time_in(entry: bytes) -> int | None:
    """The `time` (epoch ms) an encoded history entry carries, if any: the
    store gives every entry whose time it can read one, so an entry without
    it counts as older than any age limit."""
    try:
        when = codec.decode(entry).get("time")
    except (codec.DecodeError, AttributeError):
        return None
    return when if type(when) is int else None


class History:
    def __init__(self) -> None:
        self._ids = array("q")
        # _offsets[i]: bytes of the entries before entry i (commas not
        # counted), so entries j..k-1 take _offsets[k] - _offsets[j].
        self._offsets = array("q", [0])
        self._entries: list[bytes] = []

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def last_id(self) -> int:
        """The newest id kept, or 0 for an empty history (deleted ids are
        not kept: the store remembers the highest id it handed out)."""
        return self._ids[-1] if self._ids else 0

    @property
    def entries(self) -> list[bytes]:
        """The live list: appended to in place, never changed otherwise (a
        removal swaps in a new list), so a prefix of it never changes."""
        return self._entries

    def append(self, message_id: int, entry: bytes) -> None:
        if message_id <= self.last_id:
            raise ValueError(f"id {message_id} is not after {self.last_id}")
        self._ids.append(message_id)
        self._offsets.append(self._offsets[-1] + len(entry))
        self._entries.append(entry)

    def entry(self, message_id: int) -> bytes | None:
        """The encoded entry with this id, if there is one."""
        index = bisect_left(self._ids, message_id)
        if index < len(self._ids) and self._ids[index] == message_id:
            return self._entries[index]
        return None

    def remove(self, ids: Iterable[int]) -> list[tuple[int, bytes]]:
        """Take the entries with these ids out (those that exist); returns
        them, oldest first. New lists replace the old ones, which readers
        on other threads may still hold."""
        found: list[int] = []
        for message_id in sorted(set(ids)):
            index = bisect_left(self._ids, message_id)
            if index < len(self._ids) and self._ids[index] == message_id:
                found.append(index)
        if not found:
            return []
        removed = [(self._ids[i], self._entries[i]) for i in found]
        keep_ids = array("q")
        keep_entries: list[bytes] = []
        start = 0
        for index in [*found, len(self._ids)]:
            keep_ids.extend(self._ids[start:index])
            keep_entries.extend(self._entries[start:index])
            start = index + 1
        self._swap(keep_ids, keep_entries)
        return removed

    def remove_prefix(self, count: int) -> list[tuple[int, bytes]]:
        """Take the `count` oldest entries out (retention's cut); returns
        them, oldest first. New lists replace the old ones, as in remove."""
        count = max(0, min(count, len(self._ids)))
        if not count:
            return []
        removed = list(zip(self._ids[:count], self._entries[:count], strict=True))
        self._swap(self._ids[count:], self._entries[count:])
        return removed

    def restore(self, removed: list[tuple[int, bytes]]) -> None:
        """Put back entries `remove` took (their deletion could not be made
        durable), each in its place by id."""
        merged = sorted([*zip(self._ids, self._entries, strict=True), *removed])
        self._swap(array("q", (i for i, _ in merged)), [e for _, e in merged])

    def _swap(self, ids: array, entries: list[bytes]) -> None:
        self._ids = ids
        self._offsets = array("q", accumulate(map(len, entries), initial=0))
        self._entries = entries

    def first_kept(self, retention: Retention, now_ms: int) -> int:
        """The index of the oldest entry `retention` keeps as of `now_ms`
        (len(self) when it keeps none): entries before it are expired."""
        if retention.keeps_all:
            return 0
        entries = self._entries
        count = len(entries)
        return first_kept(count, lambda i: time_in(entries[i]), retention, now_ms)

    def following(
        self, after: int, limit: int, first: int = 0
    ) -> list[tuple[int, bytes]]:
        """Up to `limit` (id, entry) pairs with id > `after`, oldest first,
        none of the `first` oldest entries (the expired ones)."""
        ids, entries = self._ids, self._entries
        low = max(bisect_right(ids, after), first)
        high = min(len(entries), low + max(0, limit))
        return list(zip(ids[low:high], entries[low:high], strict=True))

    def count_through(self, message_id: int) -> int:
        """How many entries have an id up to `message_id`."""
        return bisect_right(self._ids, message_id)

    def id_at(self, index: int) -> int:
        return self._ids[index]

    def ids_before(self, index: int) -> list[int]:
        """The ids of the `index` oldest entries."""
        return list(self._ids[:index])

    def page(
        self,
        limit: int,
        before: int | None = None,
        after: int | None = None,
        max_bytes: int = 0,
        first: int = 0,
    ) -> list[bytes]:
        """The newest `limit` entries with after < id < before, oldest first,
        no more of them than fit in `max_bytes` (0: no byte bound), and none
        of the `first` oldest entries (the ones retention expired). The
        newest entry is always included, whatever its size."""
        ids, offsets, entries = self._ids, self._offsets, self._entries
        low = 0 if after is None else bisect_right(ids, after)
        low = max(low, first)
        high = len(ids) if before is None else bisect_left(ids, before)
        low = max(low, high - limit)
        if low >= high:
            return []
        if max_bytes > 0:
            wanted = offsets[high] - max_bytes
            low = bisect_left(offsets, wanted, low, high - 1)
        return entries[low:high]
