"""The in-memory history index and its paging."""

import pytest

from chatbox.local.history import History


@pytest.fixture
def history():
    h = History()
    for message_id in (1, 2, 3, 5, 8, 13):
        h.append(message_id, b'{"id":%d}' % message_id)
    return h


def ids(entries):
    return [int(e[6:-1]) for e in entries]


def test_page(history):
    assert ids(history.page(100)) == [1, 2, 3, 5, 8, 13]
    assert ids(history.page(2)) == [8, 13]
    assert ids(history.page(100, before=5)) == [1, 2, 3]
    assert ids(history.page(100, before=6)) == [1, 2, 3, 5]
    assert ids(history.page(100, after=5)) == [8, 13]
    assert ids(history.page(100, after=4)) == [5, 8, 13]
    assert ids(history.page(1, after=1, before=8)) == [5]
    assert history.page(100, after=13) == []
    assert history.page(100, after=8, before=8) == []
    assert history.last_id == 13 and len(history) == 6


def test_ids_only_grow(history):
    with pytest.raises(ValueError):
        history.append(13, b"{}")
    assert History().last_id == 0


def test_entry_by_id(history):
    """How a repeated send_id's reply finds the original's fields."""
    for message_id in (1, 5, 13):
        assert history.entry(message_id) == b'{"id":%d}' % message_id
    for missing in (0, 4, 14):
        assert history.entry(missing) is None
    assert History().entry(1) is None
