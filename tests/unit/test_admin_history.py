"""The history actions' pieces without a server: what an import message
must be, which entries an export keeps, how an export line is spliced, the
CLI's readers of v2 data.json and JSON Lines (piece by piece, across chunk
boundaries), and the admin API's refusals of history requests (over a
real socket, against a fake that records what reached it)."""

import io
import json
import os
from typing import Any

import pytest
import pytest_twisted
from pytest_twisted import ensureDeferred
from twisted.internet.defer import fail, succeed

from chatbox.admin import cli
from chatbox.admin.history import Filter, checked_import, export_line
from chatbox.chat.moderation import ModerationError
from chatbox.wire import codec
from tests.unit.test_admin_api import Admin

GOOD = {"name": "Zoë", "content": "hi 𠜎", "timestamp": "01/02/2019, 10:00:00"}


def test_an_import_message_is_held_to_a_live_send():
    made = checked_import({**GOOD, "time": 5, "mark": "announcement"}, "message #1")
    assert made == ("Zoë", "hi 𠜎", GOOD["timestamp"], 5, "announcement")
    # No `time`: read from the v2 text, as a v2 data.json is read at start.
    assert checked_import(GOOD, "m").millis is not None
    unreadable = {**GOOD, "timestamp": "yesterday"}
    assert checked_import(unreadable, "m").millis is None
    for bad, said in (
        ([], "a JSON object"),
        ({**GOOD, "name": ""}, "name"),
        ({**GOOD, "name": "n" * 101}, "name"),
        ({**GOOD, "name": 5}, "name"),
        ({**GOOD, "content": ""}, "content"),
        ({**GOOD, "content": "x" * 4001}, "content"),
        ({**GOOD, "timestamp": ""}, "timestamp"),
        ({**GOOD, "timestamp": "x" * 65}, "timestamp"),
        ({**GOOD, "timestamp": "a\nb"}, "timestamp"),
        ({**GOOD, "time": -1}, "time"),
        ({**GOOD, "time": True}, "time"),
        ({**GOOD, "time": 1.5}, "time"),
        ({**GOOD, "time": 10**20}, "time"),
        ({**GOOD, "mark": "admin"}, "mark"),
        ({**GOOD, "id": 4}, "unknown field"),
    ):
        with pytest.raises(ModerationError) as raised:
            checked_import(bad, "message #7")
        assert raised.value.status == 400
        assert (
            raised.value.message.startswith("message #7: ")
            and said in raised.value.message
        )


def stored(name: str, millis: int | None, text: str = "5/5/2020, 1:2:3") -> bytes:
    entry = {"id": 1, "name": name, "content": "c", "timestamp": text}
    if millis is not None:
        entry["time"] = millis
    return codec.encode(entry)


def test_the_export_filter():
    assert Filter(None, None, None).everything
    same = Filter("аlice", None, None)  # Cyrillic а: alice for ARNS
    assert same.keeps(stored("alice", 1)) and not same.keeps(stored("bob", 1))
    ranged = Filter(None, 10, 20)
    assert [ranged.keeps(stored("a", t)) for t in (9, 10, 20, 21)] == [
        False,
        True,
        True,
        False,
    ]
    # No readable time: in no range, but kept when no range is asked.
    assert not ranged.keeps(stored("a", None, "whenever"))
    assert Filter("a", None, None).keeps(stored("a", None, "whenever"))


def test_an_export_line_is_the_entry_with_its_room_first():
    entry = codec.encode({"id": 3, "name": "𐌰", "content": "x", "timestamp": "t"})
    line = export_line("maths", entry)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert list(json.loads(line)) == ["room", "id", "name", "content", "timestamp"]
    assert json.loads(export_line("", entry))["room"] == ""


# -- the CLI's readers --


def items(text: str, chunk: int, monkeypatch) -> list:
    monkeypatch.setattr(cli, "READ_CHUNK", chunk)
    return list(cli._array_items(io.StringIO(text)))


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1 << 18])
def test_a_json_array_is_read_item_by_item(chunk, monkeypatch):
    records = [{"name": f"n{i}", "content": '𠜎 [,]} "x"' * i} for i in range(30)]
    text = (
        "  [\n"
        + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)
        + "\n]\n"
    )
    found = items(text, chunk, monkeypatch)
    assert [item for _, item in found] == records
    assert (
        found[0][0] == "message #1 (line 2)" and found[29][0] == "message #30 (line 31)"
    )
    assert (
        items("[]", chunk, monkeypatch) == []
        and items(" [ ] ", chunk, monkeypatch) == []
    )


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("", "not a JSON array"),
        ('{"a": 1}', "not a JSON array"),
        ('[{"a": 1} {"b": 2}]', "after message #1 (line 1): expected , or ]"),
        ('[{"a": 1},', "message #2 (line 1): not JSON"),
        ('[{"a": 1', "message #1 (line 1): not JSON"),
        ('[\n{"a": 1},\n{"a": tru}]', "message #2 (line 3): not JSON"),
    ],
)
def test_a_broken_array_is_named_where(text, said, monkeypatch):
    with pytest.raises(cli.Failed) as raised:
        items(text, 3, monkeypatch)
    assert said in raised.value.message


def test_an_array_item_too_long_is_refused_not_read_whole(monkeypatch):
    monkeypatch.setattr(cli, "MAX_ITEM", 100)
    with pytest.raises(cli.Failed) as raised:
        items('[{"content": "' + "x" * 1000 + '"}]', 16, monkeypatch)
    assert "message #1 (line 1): longer than 100 characters" in raised.value.message


def test_json_lines_are_read_line_by_line(monkeypatch):
    monkeypatch.setattr(cli, "MAX_ITEM", 50)
    data = b'{"a": 1}\n\n  \n{"b": 2}\n'
    assert list(cli._line_items(io.BytesIO(data))) == [
        ("line 1", {"a": 1}),
        ("line 4", {"b": 2}),
    ]
    for raw, said in (
        (b'{"a": 1}\n{"a"\n', "line 2: not JSON"),
        (b'{"a": 1}\n' + b"x" * 60 + b"\n", "line 2: longer than 50 bytes"),
        (b'\xff\xfe{"a": 1}\n', "line 1: not JSON"),
    ):
        with pytest.raises(cli.Failed) as raised:
            list(cli._line_items(io.BytesIO(raw)))
        assert said in raised.value.message


def test_a_stored_entry_becomes_an_import_message():
    entry = {"id": 9, **GOOD, "time": 5, "verified": True}
    assert cli._message(entry, "line 1") == {**GOOD, "time": 5, "mark": "verified"}
    for bad, said in (
        ([1], "a JSON object"),
        ({**GOOD, "admin": True}, "unknown field 'admin'"),
        ({"name": "a", "content": "b"}, "'timestamp' is missing"),
        ({**GOOD, "name": 5}, "'name' is missing or not text"),
    ):
        with pytest.raises(cli.Failed) as raised:
            cli._message(bad, "line 3")
        assert (
            raised.value.message.startswith("line 3: ") and said in raised.value.message
        )


def test_times_on_the_command_line():
    assert cli._instant("1780000000000") == 1_780_000_000_000
    assert cli._instant("2026-05-28T20:26:40Z") == 1_780_000_000_000
    with pytest.raises(ValueError):
        cli._instant("soon")


def test_a_room_name_never_escapes_the_backup_folder():
    assert cli._BackupFolder.relative("") == "data.json"
    assert cli._BackupFolder.relative("maths") == "data.rooms/maths.json"
    for bad in ("../etc", ".hidden", "a/b", "x\0"):
        with pytest.raises(cli.Failed):
            cli._BackupFolder.relative(bad)


# -- the API's history requests --


class FakeHistory:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def check_room(self, room: Any) -> Any:
        self.calls.append(("check_room", (room,)))
        if room == "nosuch":
            return fail(ModerationError(404, "no room 'nosuch'"))
        return succeed(None)

    def export(self, operator: str, sink: Any, *args: Any) -> Any:
        self.calls.append(("export", (operator, *args)))
        sink.write(b'{"room":"","id":1}\n')
        return succeed(1)

    def import_messages(self, *args: Any) -> Any:
        self.calls.append(("import", args))
        return succeed(list(range(1, len(args[2]) + 1)))

    def erase(self, *args: Any) -> Any:
        self.calls.append(("erase", args))
        return succeed({"": 2, "maths": 1})


@pytest_twisted.async_yield_fixture
async def admin():
    running = Admin()
    running.site.api.history = FakeHistory()
    yield running
    await running.stop()


@ensureDeferred
async def test_an_export_streams_json_lines(admin):
    reply = await admin.call(
        "GET", "/v1/export?room=&nickname=Zo%C3%AB&since=1&until=2"
    )
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/x-ndjson"
    assert reply.headers["transfer-encoding"] == "chunked"
    assert b'{"room":"","id":1}\n' in reply.received
    assert reply.received.endswith(b"\r\n0\r\n\r\n")
    assert admin.site.api.history.calls[-1] == ("export", ("alice", "", "Zoë", 1, 2))


@pytest.mark.parametrize(
    ("query", "status", "said"),
    [
        ("?since=abc", 400, "since must be epoch milliseconds"),
        ("?until=-5", 400, "until must be epoch milliseconds"),
        ("?since=5&until=4", 400, "since is after until"),
        ("?nickname=", 400, "nickname is not a nickname"),
        ("?room=nosuch", 404, "no room 'nosuch'"),
        ("?who=me", 400, "unknown query parameter"),
        ("?room=a&room=b", 400, "room given more than once"),
    ],
)
@ensureDeferred
async def test_an_export_refused_before_a_line(admin, query, status, said):
    reply = await admin.call("GET", "/v1/export" + query)
    assert reply.status == status and said in reply.json["error"]
    assert [c for c in admin.site.api.history.calls if c[0] == "export"] == []


@ensureDeferred
async def test_an_import_is_checked_whole_before_anything(admin):
    good = {"messages": [GOOD, {**GOOD, "mark": "verified"}]}
    reply = await admin.call("POST", "/v1/import?room=maths", good)
    assert reply.status == 200 and reply.json == {"imported": [1, 2]}
    for body, said in (
        ({"messages": []}, "non-empty list"),
        ({"messages": {"a": 1}}, "non-empty list"),
        ({"messages": [GOOD], "room": "x"}, "unknown field 'room'"),
        ({"messages": [GOOD, {**GOOD, "content": ""}]}, "message #2: content"),
        ({"messages": [GOOD] * 10_001}, "at most 10000"),
    ):
        reply = await admin.call("POST", "/v1/import", body)
        assert reply.status in (400, 413), reply.received[:200]
        if reply.status == 400:
            assert said in reply.json["error"]
    assert len([c for c in admin.site.api.history.calls if c[0] == "import"]) == 1


@ensureDeferred
async def test_an_erasure_answers_counts_per_room(admin):
    body = {"name": "Zoë", "room": "maths", "since": 1, "until": 9, "reason": "asked"}
    reply = await admin.call("POST", "/v1/erase", body)
    assert reply.json == {"erased": {"": 2, "maths": 1}, "total": 3}
    assert admin.site.api.history.calls[-1] == (
        "erase",
        ("alice", "Zoë", "maths", 1, 9, "asked"),
    )
    for bad, said in (
        ({"name": "Zoë"}, "reason is required"),
        ({"name": "", "reason": "r"}, "name cannot be empty"),
        ({"name": "n" * 101, "reason": "r"}, "name is not a nickname"),
        (
            {"name": "Zoë", "reason": "r", "since": 9, "until": 1},
            "since is after until",
        ),
        (
            {"name": "Zoë", "reason": "r", "since": "yesterday"},
            "since must be an integer",
        ),
    ):
        reply = await admin.call("POST", "/v1/erase", bad)
        assert reply.status == 400 and said in reply.json["error"], reply.json


@pytest.mark.parametrize("name", ["data.json", "history", "chat.v2.json"])
def test_restore_names_the_files_the_server_does(tmp_path, name):
    """The admin layer may not import a backend, so restore spells out one
    process's layout itself: it must be the server's, or a restore would
    write files the server never reads (or leave a journal it replays)."""
    from chatbox.local import datafile
    from chatbox.local.moderation import moderation_path
    from chatbox.local.rooms import rooms_folder

    data = str(tmp_path / name)
    layout = cli.history_layout(data)
    assert layout["rooms"] == rooms_folder(data)
    assert layout["rules"] == moderation_path(data)
    assert layout["own"] == [
        data,
        *datafile.journal_paths(data),
        datafile.sends_path(data),
    ]
    # The lock is the server's own: held by it, restore is refused.
    held = datafile.HistoryLock(data)
    try:
        held.claim()
        with pytest.raises(cli.Failed) as raised:
            cli._hold_history(layout["lock"], data)
        assert "in use by another chatbox (pid " in raised.value.message
    finally:
        held.release()
    os.close(cli._hold_history(layout["lock"], data))
