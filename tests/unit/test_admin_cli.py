"""chatbox-admin's parts that need no server (chatbox/admin/cli.py):
durations, times, rooms, usage errors, new-token. tests/test_admin.py
runs it as a subprocess against a real server."""

import os
import stat
import subprocess
import sys
from datetime import datetime

import pytest

from chatbox.admin import cli, tokens

DURATIONS = [("90", 90), ("30s", 30), ("10m", 600), ("2h", 7200), ("7d", 604_800)]
MORE_DURATIONS = [("1w", 604_800), ("1.5h", 5400), (" 2H ", 7200), ("0.5", 0.5)]


@pytest.mark.parametrize("text,seconds", [*DURATIONS, *MORE_DURATIONS])
def test_durations(text, seconds):
    assert cli.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5", "5x", "h", "1e9", "2 hours"])
def test_not_durations(text):
    with pytest.raises(ValueError):
        cli.parse_duration(text)


def test_times_as_a_duration_ago():
    assert cli.parse_time("2h", now=10_000.0) == (10_000 - 7200) * 1000
    assert cli.parse_time("90", now=100.0) == 10_000


def test_times_in_iso_8601():
    assert cli.parse_time("2026-12-06T14:30:00Z") == 1_796_567_400_000
    assert cli.parse_time("2026-12-06T15:30:00+01:00") == 1_796_567_400_000
    local = datetime(2026, 12, 6, 14, 30).astimezone().timestamp()
    assert cli.parse_time("2026-12-06T14:30") == int(local * 1000)


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "12:00:00Z junk"])
def test_not_times(text):
    with pytest.raises(ValueError):
        cli.parse_time(text)


@pytest.mark.parametrize(
    "given,room", [("/", ""), ("", ""), ("/maths", "maths"), ("maths", "maths")]
)
def test_rooms_as_users_prints_them(given, room):
    assert cli._room(given) == room


def test_a_sanction_line():
    sanction = {
        "id": "b-1",
        "kind": "ban",
        "target": "address",
        "value": "10.0.0.0/8",
        "reason": "spam wave",
        "by": "alice",
        "created": 0,
        "expires": 1_796_567_400_000,
        "room": None,
    }
    assert cli._sanction_line(sanction) == (
        "b-1\taddress:10.0.0.0/8\t*\t2026-12-06T14:30:00Z\talice\tspam wave"
    )
    assert "\t/\tnever\t" in cli._sanction_line(
        {**sanction, "room": "", "expires": None}
    )


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nothing"],
        ["kick", "A"],
        ["ban", "A", "--reason", "r"],
        ["ban", "nick", "A", "--reason", "r"],
        ["mute", "name", "A", "--reason", "r"],
        ["mute", "name", "A", "--for", "5x", "--reason", "r"],
        ["delete", "--reason", "r"],
        ["delete", "12", "x", "--reason", "r"],
        ["delete", "0", "--reason", "r"],
        ["delete-by", "A", "--since", "yesterday", "--reason", "r"],
        ["slow-mode", "-1"],
        ["slow-mode", "many"],
        ["announce", "--room", "a", "--all-rooms", "hi"],
        ["new-token", "alice"],
        ["unban"],
        ["token"],
        ["token", "A", "--role", "admin"],
        ["token", "A", "--days", "0"],
        ["token", "A", "--days", "367"],
        ["token", "A", "--days", "1.5"],
        ["token", "A", "--link", "chat.school.example"],
        ["unverify"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2


def test_no_token_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.delenv("CHATBOX_ADMIN_TOKEN", raising=False)
    assert cli.main(["bans"]) == 2
    assert "CHATBOX_ADMIN_TOKEN" in capsys.readouterr().err


def test_an_unreadable_token_file_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["--token-file", str(tmp_path / "none"), "bans"]) == 2
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert cli.main(["--token-file", str(empty), "bans"]) == 2


def test_a_url_that_is_not_http_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setenv("CHATBOX_ADMIN_TOKEN", "t")
    assert cli.main(["--url", "ftp://x", "bans"]) == 2


def test_new_token_prints_it_once_and_appends_its_hash(tmp_path, capsys):
    path = tmp_path / "tokens"
    path.write_text("# ours\n")
    assert cli.main(["new-token", "alice", "--tokens-file", str(path)]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token and "\n" not in token
    assert token not in out.err
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().startswith("# ours\n")
    assert token not in path.read_text()
    assert tokens.Tokens.load(str(path)).operator(token.encode()) == "alice"
    assert cli.main(["--json", "new-token", "bob", "--tokens-file", str(path)]) == 0
    assert '"name": "bob"' in capsys.readouterr().out
    assert len(tokens.Tokens.load(str(path))) == 2


def test_new_token_refuses_a_second_line_of_one_name(tmp_path, capsys):
    """Operator review: two lines named alice, and the audit cannot tell
    them apart, nor "remove the line" say which."""
    path = tmp_path / "tokens"
    assert cli.main(["new-token", "alice", "--tokens-file", str(path)]) == 0
    before = path.read_text()
    capsys.readouterr()
    assert cli.main(["new-token", "alice", "--tokens-file", str(path)]) == 1
    out = capsys.readouterr()
    assert out.out == "" and "already has an operator 'alice'" in out.err
    assert path.read_text() == before


@pytest.mark.parametrize("name", ["a b", "a:b", "#a", "", "a\tb"])
def test_new_token_refuses_a_name_it_cannot_write(tmp_path, name, capsys):
    path = tmp_path / "tokens"
    assert cli.main(["new-token", name, "--tokens-file", str(path)]) == 2
    assert not path.exists()
    assert capsys.readouterr().out == ""


def test_new_token_does_not_add_to_a_bad_file(tmp_path, capsys):
    path = tmp_path / "tokens"
    path.write_text("garbage\n")
    assert cli.main(["new-token", "alice", "--tokens-file", str(path)]) == 1
    assert path.read_text() == "garbage\n"
    assert "line 1" in capsys.readouterr().err


def test_it_runs_on_the_standard_library_alone():
    """Every command but new-token: an operator's laptop needs no Twisted."""
    program = (
        "import sys, chatbox.admin.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('twisted', 'autobahn', 'orjson', 'zope', 'prometheus_client', 'icu')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_common_options_also_follow_the_command(monkeypatch):
    monkeypatch.setenv("CHATBOX_ADMIN_TOKEN", "t")
    options = cli.parser().parse_args(["--url", "http://a", "bans", "--json"])
    assert (options.url, options.json) == ("http://a", True)
    options = cli.parser().parse_args(["--json", "bans", "--token-file", "f"])
    assert (options.json, options.token_file) == (True, "f")


@pytest.mark.parametrize(
    ("base", "room", "link"),
    [
        (
            "http://chat.school.example:9000",
            "class-7a",
            "http://chat.school.example:9000/class-7a?token=T.k.n",
        ),
        ("https://chat.school.example", "", "https://chat.school.example/?token=T.k.n"),
        (
            "https://school.example/chat",
            "lớp-7a",
            "https://school.example/chat/l%E1%BB%9Bp-7a?token=T.k.n",
        ),
    ],
)
def test_a_link_per_room(base, room, link):
    assert cli._link(cli._base(base + "/"), room, "T.k.n") == link


def test_a_verified_line(monkeypatch):
    answer = {
        "verified": [
            {
                "name": "Ms Lan",
                "rooms": ["class-7a", ""],
                "by": "alice",
                "at": 1_796_567_400_000,
            }
        ]
    }

    def request(options, method, path, body=None):
        assert (method, path) == ("GET", "/v1/verified")
        return answer

    monkeypatch.setattr(cli, "request", request)
    _, lines = cli.cmd_verified(None)
    assert lines == ["Ms Lan\t/class-7a,/\talice\t2026-12-06T14:30:00Z"]
