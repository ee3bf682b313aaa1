"""data.json and its journal on disk: loading, damage, atomic rewrites."""

import json

import pytest

from chatbox import codec, datafile


def entry(message_id, content="hi"):
    return {
        "id": message_id,
        "name": "An",
        "content": content,
        "timestamp": "01/01/2026, 00:00:00",
    }


def decoded(loaded):
    return [codec.decode(e) for e in loaded.entries]


def test_missing_or_empty_file_is_an_empty_history(tmp_path):
    assert datafile.load(str(tmp_path / "absent.json")).entries == []
    path = tmp_path / "data.json"
    path.write_text("  \n")
    assert datafile.load(str(path)).entries == []


def test_v2_history_without_ids_gets_ids_in_order(tmp_path):
    path = tmp_path / "data.json"
    v2 = [
        {"name": "An", "content": f"m{i}", "timestamp": "01/01/2026, 00:00:00"}
        for i in range(3)
    ]
    path.write_text(json.dumps(v2))
    loaded = datafile.load(str(path))
    assert loaded.ids == [1, 2, 3]
    assert [e["content"] for e in decoded(loaded)] == ["m0", "m1", "m2"]
    assert not loaded.needs_fold


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[{"name": "An", "content": "x", "timestamp": "t"}', "not valid JSON: "),
        ('{"messages": []}', "expected a JSON array of messages, found dict"),
        (
            '[{"name": "An", "content": "x", "timestamp": "t"}, 5]',
            "message #2: expected an object",
        ),
        ('[{"name": "An", "timestamp": "t"}]', "message #1: 'content' is missing"),
        (
            '[{"name": 1, "content": "x", "timestamp": "t"}]',
            "message #1: 'name' is missing or not a string",
        ),
        (
            '[{"id": 2, "name": "A", "content": "x", "timestamp": "t"},'
            ' {"id": 2, "name": "A", "content": "y", "timestamp": "t"}]',
            "message #2: 'id' must be",
        ),
    ],
)
def test_damaged_history_names_the_file_and_the_place(tmp_path, text, says):
    path = tmp_path / "data.json"
    path.write_text(text)
    with pytest.raises(datafile.HistoryFileError) as caught:
        datafile.load(str(path))
    assert str(caught.value).startswith(str(path))
    assert says in str(caught.value)
    assert path.read_text() == text  # never touched


def test_json_error_gives_line_and_column(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n{"name": "An",,}\n]')
    with pytest.raises(datafile.HistoryFileError, match=r"line 2 column \d+"):
        datafile.load(str(path))


def test_journal_replay_skips_what_data_json_has_and_drops_a_torn_tail(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([entry(1), entry(2)]))
    journal, _ = datafile.journal_paths(str(path))
    lines = [json.dumps(entry(i, f"j{i}")) for i in (2, 3, 4)]
    with open(journal, "w") as f:
        f.write("\n".join(lines) + "\n" + '{"id": 5, "name": "An", "cont')
    loaded = datafile.load(str(path))
    assert loaded.ids == [1, 2, 3, 4]
    assert loaded.needs_fold


def test_journal_damage_followed_by_good_lines_refuses(tmp_path):
    path = tmp_path / "data.json"
    journal, _ = datafile.journal_paths(str(path))
    with open(journal, "w") as f:
        f.write(json.dumps(entry(1)) + "\n" + "garbage\n" + json.dumps(entry(2)) + "\n")
    with pytest.raises(
        datafile.HistoryFileError, match=r"journal: line 2: not valid JSON"
    ):
        datafile.load(str(path))


def test_journal_damaged_tail_lines_are_a_torn_write(tmp_path):
    path = tmp_path / "data.json"
    journal, _ = datafile.journal_paths(str(path))
    with open(journal, "wb") as f:
        f.write(json.dumps(entry(1)).encode() + b"\n" + b"\0" * 30 + b"\n" + b"\0" * 10)
    assert datafile.load(str(path)).ids == [1]


def test_old_journal_is_replayed_before_the_current_one(tmp_path):
    path = tmp_path / "data.json"
    journal, old = datafile.journal_paths(str(path))
    with open(old, "w") as f:
        f.write(json.dumps(entry(1)) + "\n" + json.dumps(entry(2)) + "\n")
    with open(journal, "w") as f:
        f.write(json.dumps(entry(3)) + "\n")
    assert datafile.load(str(path)).ids == [1, 2, 3]


def test_write_array_is_readable_json_and_keeps_the_file_mode(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("[]")
    path.chmod(0o600)
    entries = [codec.encode(entry(i)) for i in range(1, 10_001)]
    datafile.write_array(str(path), entries, 9_999)
    parsed = json.loads(path.read_text())
    assert len(parsed) == 9_999 and parsed[-1]["id"] == 9_999
    assert path.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "data.json.tmp").exists()
    datafile.write_array(str(path), entries, 0)
    assert json.loads(path.read_text()) == []


def test_journal_append_failure_leaves_the_file_as_it_was(tmp_path):
    journal = datafile.Journal(str(tmp_path / "j"))
    journal.append(b"one\n")
    full = datafile.Journal("/dev/full")  # the kernel's always-full device
    with pytest.raises(OSError) as caught:
        full.append(b"two\n")
    assert caught.value.strerror == "No space left on device"
    journal.append(b"three\n")
    assert (tmp_path / "j").read_bytes() == b"one\nthree\n"
    assert journal.size == len(b"one\nthree\n")
