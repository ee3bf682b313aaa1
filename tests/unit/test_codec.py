"""The JSON codec: what it refuses, and what kept bytes cost."""

import tracemalloc

import pytest

from chatbox.wire import codec

ENTRY = {"id": 1, "name": "An", "content": "a short chat message", "timestamp": "t"}


def test_kept_entries_cost_their_length_not_a_working_buffer():
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [codec.encode_compact(ENTRY) for _ in range(10_000)]
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept[0] == codec.encode(ENTRY)
    # About 100 bytes of JSON and a bytes header each, plus the list: a few
    # hundred bytes per entry, where orjson's own result holds ~4 KiB.
    assert used < 10_000 * 400, used


@pytest.mark.parametrize(
    "payload", [b"NaN", b"[1e999]", b'"\\ud800"', b"[" * 2000 + b"]" * 2000, b"{"]
)
def test_what_peers_cannot_share_is_not_json(payload):
    with pytest.raises(codec.DecodeError):
        codec.decode(payload)
