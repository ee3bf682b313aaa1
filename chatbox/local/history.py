"""The committed history in memory: ids and encoded entries, oldest first.

Entries are kept as the exact JSON bytes that go into data.json and into
`get` replies, so answering `get` is a slice and a join, never an encode.
Only the store appends, and only after the entry is durable.

A running total of entry sizes is kept beside the ids, so a page can be
bounded by bytes as well as by count with one bisection: a reply must never
grow with the length of the messages people happened to write.
"""

from array import array
from bisect import bisect_left, bisect_right

__all__ = ["History"]


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
        """The newest id, or 0 for an empty history."""
        return self._ids[-1] if self._ids else 0

    @property
    def entries(self) -> list[bytes]:
        """The live list: append-only, so a prefix of it never changes."""
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

    def page(
        self,
        limit: int,
        before: int | None = None,
        after: int | None = None,
        max_bytes: int = 0,
    ) -> list[bytes]:
        """The newest `limit` entries with after < id < before, oldest first,
        no more of them than fit in `max_bytes` (0: no byte bound). The
        newest entry is always included, whatever its size."""
        low = 0 if after is None else bisect_right(self._ids, after)
        high = len(self._ids) if before is None else bisect_left(self._ids, before)
        low = max(low, high - limit)
        if low >= high:
            return []
        if max_bytes > 0:
            wanted = self._offsets[high] - max_bytes
            low = bisect_left(self._offsets, wanted, low, high - 1)
        return self._entries[low:high]
