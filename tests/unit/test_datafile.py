"""data.json and its journal on disk: loading, damage, atomic rewrites."""

import json
import os
import stat
import zlib

import pytest

from chatbox.local import datafile
from chatbox.wire import codec


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


def line(message_id, content="hi"):
    """A journal record, built here from the format, not by the code under test."""
    body = json.dumps(entry(message_id, content), separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def legacy(message_id, content="hi"):
    """A record as the version before checksums wrote it."""
    return json.dumps(entry(message_id, content)).encode() + b"\n"


def write_journal(path, *records, old=False):
    journal, retired = datafile.journal_paths(str(path))
    with open(retired if old else journal, "wb") as f:
        f.write(b"".join(records))
    return retired if old else journal


def refusal(path):
    """Load must refuse, naming the way back, and change nothing on disk."""
    folder = path.parent
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(datafile.HistoryFileError) as caught:
        datafile.load(str(path))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    message = str(caught.value)
    assert "Recovering a damaged history" in message
    return message


def test_record_is_checksum_space_json_and_greppable():
    body = b'{"id":1,"name":"An"}'
    assert datafile.record(body) == b"%08x " % zlib.crc32(body) + body + b"\n"
    assert datafile.record(body)[:8].decode().islower()


def test_journal_replay_skips_what_data_json_has_and_keeps_a_torn_tail(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([entry(1), entry(2)]))
    torn = b'5f3a09c1 {"id":5,"name":"An","cont'
    journal = write_journal(path, line(2), line(3), line(4), torn)
    loaded = datafile.load(str(path))
    assert loaded.ids == [1, 2, 3, 4]
    assert loaded.needs_fold
    [tail] = loaded.torn
    assert (tail.path, tail.data) == (journal, torn)
    assert tail.offset == len(line(2) + line(3) + line(4))


def test_a_flipped_byte_in_the_last_line_refuses_with_file_and_offset(tmp_path):
    path = tmp_path / "data.json"
    records = [line(i, f"message {i}") for i in range(1, 4)]
    damaged = records[2].replace(b"message 3", b"message 8")
    journal = write_journal(path, records[0], records[1], damaged)
    message = refusal(path)
    offset = len(records[0] + records[1])
    assert message.startswith(f"{journal}: line 3 (byte offset {offset}): ")
    assert "fails its checksum" in message


def test_a_flipped_byte_in_the_checksum_refuses(tmp_path):
    path = tmp_path / "data.json"
    second = line(2)
    flipped = (b"1" if second[:1] == b"0" else b"0") + second[1:]
    write_journal(path, line(1), flipped)
    assert f"line 2 (byte offset {len(line(1))})" in refusal(path)


@pytest.mark.parametrize("where", ["second half", "middle third"])
def test_zeroed_journal_at_real_size_refuses(tmp_path, where):
    path = tmp_path / "data.json"
    records = b"".join(line(i, f"message {i} " + "x" * 80) for i in range(1, 30_001))
    assert len(records) > 3 * datafile.MAX_BATCH_BYTES
    if where == "second half":
        start, end = len(records) // 2, len(records)
    else:
        start, end = len(records) // 3, 2 * len(records) // 3
    damaged = records[:start] + b"\0" * (end - start) + records[end:]
    journal = write_journal(path, damaged)
    message = refusal(path)
    offset = damaged.rfind(b"\n", 0, start) + 1
    number = damaged.count(b"\n", 0, offset) + 1
    assert message.startswith(f"{journal}: line {number} (byte offset {offset}): ")


def test_an_emptied_data_json_under_a_journal_refuses_naming_both(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("")
    journal = write_journal(path, *(line(i) for i in range(5001, 5004)))
    message = refusal(path)
    assert message.startswith(f"{journal}: line 1 (byte offset 0): ")
    assert f"holds message id 5001, but {path} ends at id 0" in message


def test_an_older_data_json_under_a_journal_refuses(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([entry(i) for i in range(1, 4)]))
    write_journal(path, *(line(i) for i in range(3, 8)), old=True)
    assert datafile.load(str(path)).ids == list(range(1, 8))  # overlaps: fine
    path.write_text(json.dumps([entry(i) for i in range(1, 3)]))
    write_journal(path, *(line(i) for i in range(4, 8)), old=True)
    assert f"id 4, but {path} ends at id 2" in refusal(path)


def test_an_id_gap_inside_the_journals_refuses(tmp_path):
    path = tmp_path / "data.json"
    journal = write_journal(path, line(1), line(2), line(4))
    assert refusal(path).startswith(
        f"{journal}: line 3 (byte offset {len(line(1) + line(2))}): "
        "holds message id 4 where id 3 must follow"
    )
    write_journal(path, line(3))
    write_journal(path, line(1), line(2), old=True)
    assert datafile.load(str(path)).ids == [1, 2, 3]
    write_journal(path, line(4))  # 3 is missing between journal.old and journal
    assert "holds message id 4 where id 3 must follow" in refusal(path)


def test_the_old_checksum_less_format_is_still_replayed(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([entry(1)]))
    # That writer could leave a gap after a failed batch: only order counts.
    write_journal(path, legacy(1), legacy(2), legacy(5), b'{"id": 6, "na')
    loaded = datafile.load(str(path))
    assert loaded.ids == [1, 2, 5]
    assert [t.data for t in loaded.torn] == [b'{"id": 6, "na']


def test_damage_in_the_old_format_refuses_too(tmp_path):
    path = tmp_path / "data.json"
    journal = write_journal(path, legacy(1), b"{garbage\n", legacy(2))
    message = refusal(path)
    assert message.startswith(f"{journal}: line 2 (byte offset {len(legacy(1))}): ")
    assert "not valid JSON" in message


def test_a_complete_line_of_zeros_is_damage_not_a_torn_write(tmp_path):
    path = tmp_path / "data.json"
    write_journal(path, line(1), b"\0" * 30 + b"\n", b"\0" * 10)
    assert "line 2" in refusal(path)


def test_an_incomplete_tail_longer_than_one_write_is_damage(tmp_path):
    path = tmp_path / "data.json"
    cap = datafile.MAX_BATCH_BYTES
    write_journal(path, line(1), b"\0" * cap)
    assert [len(t.data) for t in datafile.load(str(path)).torn] == [cap]
    journal = write_journal(path, line(1), b"\0" * (cap + 1))
    message = refusal(path)
    assert message.startswith(f"{journal}: line 2 (byte offset {len(line(1))}): ")
    assert f"the last {cap + 1} bytes hold no complete record" in message
    # One big record written alone, torn: no NUL, so not zeroed blocks.
    big = line(2, "x" * (2 * cap))[: cap + 100]
    write_journal(path, line(1), big)
    assert [t.data for t in datafile.load(str(path)).torn] == [big]
    big_with_zeros = big[:-50] + b"\0" * 50
    write_journal(path, line(1), big_with_zeros)
    assert "hold no complete record" in refusal(path)


def test_old_journal_is_replayed_before_the_current_one(tmp_path):
    path = tmp_path / "data.json"
    write_journal(path, line(1), line(2), old=True)
    write_journal(path, line(3))
    assert datafile.load(str(path)).ids == [1, 2, 3]


def test_journal_ids_data_json_already_has_are_skipped(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([entry(i) for i in range(1, 4)]))
    write_journal(path, line(1), line(2), line(3), old=True)  # folded, not removed
    write_journal(path, line(4), line(5))
    assert datafile.load(str(path)).ids == [1, 2, 3, 4, 5]


def test_keep_torn_writes_the_bytes_beside_the_history(tmp_path):
    path = str(tmp_path / "data.json")
    tail = datafile.TornTail(path + ".journal", 10, b"\0partial")
    first = datafile.keep_torn(path, tail)
    second = datafile.keep_torn(path, tail)
    assert first != second
    for kept in (first, second):
        assert kept.startswith(path + ".torn-")
        with open(kept, "rb") as f:
            assert f.read() == b"\0partial"


def test_the_lock_refuses_a_second_owner_and_names_the_first(tmp_path):
    path = str(tmp_path / "data.json")
    held = datafile.HistoryLock(path)
    lock_file = tmp_path / "data.json.lock"
    assert lock_file.read_text() == ""
    held.claim()
    assert lock_file.read_text() == f"{os.getpid()}\n"
    with pytest.raises(datafile.HistoryFileError) as caught:
        datafile.HistoryLock(path)
    assert str(caught.value) == (
        f"{path} is in use by another chatbox (pid {os.getpid()}); "
        "stop it first or use another --data"
    )
    assert lock_file.read_text() == f"{os.getpid()}\n"
    held.release()
    datafile.HistoryLock(path).release()


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
    assert caught.value.filename == "/dev/full"  # os.write names no file
    journal.append(b"three\n")
    assert (tmp_path / "j").read_bytes() == b"one\nthree\n"
    assert journal.size == len(b"one\nthree\n")


def test_a_complete_last_record_with_its_newline_changed_is_damage(tmp_path):
    """Seen by a reviewer: flipping only the final newline made the last
    (acknowledged) record look like a torn write, and it was dropped."""
    from chatbox.local import datafile

    path = tmp_path / "data.json"
    entries = [
        b'{"id":%d,"name":"a","content":"m%d","timestamp":"t"}' % (i, i)
        for i in range(1, 21)
    ]
    journal = b"".join(datafile.record(e) for e in entries)
    (tmp_path / "data.json.journal").write_bytes(journal[:-1] + b"\x0b")
    with pytest.raises(datafile.HistoryFileError) as refused:
        datafile.load(str(path))
    assert "line 20" in str(refused.value)
    assert "not a newline" in str(refused.value)
    # The record whole but its newline missing was written in full: kept.
    (tmp_path / "data.json.journal").write_bytes(journal[:-1])
    loaded = datafile.load(str(path))
    assert loaded.ids == list(range(1, 21)) and not loaded.torn


class Fsyncs(list):
    """A recording `fsync` seam: each call appends what was fsync'd (the
    folder, or the file's name in it) and what the folder held at that
    moment, so a rename shows as the listing changing between two fsyncs."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def __call__(self, fd):
        os.fsync(fd)
        synced = os.fstat(fd)
        names = sorted(os.listdir(self.folder))
        what = "folder" if stat.S_ISDIR(synced.st_mode) else "?"
        for name in names:
            held = os.stat(self.folder / name)
            if (held.st_dev, held.st_ino) == (synced.st_dev, synced.st_ino):
                what = name
        self.append((what, names))


def test_write_array_fsyncs_the_temporary_file_then_renames_then_the_folder(
    tmp_path,
):
    path = tmp_path / "data.json"
    path.write_text("[]")
    fsyncs = Fsyncs(tmp_path)
    datafile.write_array(str(path), [codec.encode(entry(1))], 1, fsync=fsyncs)
    assert fsyncs == [
        ("data.json.tmp", ["data.json", "data.json.tmp"]),  # before the rename
        ("folder", ["data.json"]),  # after it
    ]
    assert json.loads(path.read_text()) == [entry(1)]


def test_remove_durably_unlinks_then_fsyncs_the_folder(tmp_path):
    path = tmp_path / "data.json.journal.old"
    path.write_bytes(b"")
    fsyncs = Fsyncs(tmp_path)
    datafile.remove_durably(str(path), fsync=fsyncs)
    assert fsyncs == [("folder", [])]
    datafile.remove_durably(str(path), fsync=fsyncs)  # gone already: no-op
    assert fsyncs == [("folder", [])]


def test_fold_makes_data_json_durable_before_dropping_the_old_journal(tmp_path):
    path = tmp_path / "data.json"
    old = tmp_path / "data.json.journal.old"
    old.write_bytes(line(1))
    fsyncs = Fsyncs(tmp_path)
    datafile.fold(str(path), [codec.encode(entry(1))], 1, fsync=fsyncs)
    assert fsyncs == [
        ("data.json.tmp", ["data.json.journal.old", "data.json.tmp"]),
        ("folder", ["data.json", "data.json.journal.old"]),
        ("folder", ["data.json"]),
    ]
