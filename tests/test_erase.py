"""Erasing a person (issue 16): every message of a nickname in every room,
loaded or not, through the rooms' own deletion, on a real twistd, and then
in no file of the data folder at all."""

import json
import signal
from pathlib import Path
from urllib.parse import quote

from pytest_twisted import ensureDeferred

from tests.client import connect
from tests.history_ops import (
    GOTHIC,
    SECRET,
    START_MS,
    Twistd,
    cli,
    exported,
    messages,
    write_history,
)

DEFAULT_COUNT = 10_000
MATHS_COUNT = 2_000


def secret_history(count: int, start_id: int = 1) -> list[dict]:
    """alice, GOTHIC and bob taking turns; GOTHIC's messages hold SECRET."""
    found = messages(count, ["alice", GOTHIC, "bob"], start_id)
    for item in found:
        if item["name"] == GOTHIC:
            item["content"] = f"{SECRET} {item['id']}"
    return found


def files_holding(folder: Path, *needles: str) -> list[str]:
    """Every file under `folder` holding a needle, as UTF-8 or as JSON's
    \\u escapes (a v2 file or an ASCII-only writer would use those)."""
    forms = []
    for needle in needles:
        forms.append(needle.encode())
        forms.append(json.dumps(needle).strip('"').encode())
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and any(form in path.read_bytes() for form in forms)
    )


async def count(admin: str, query: str = "") -> int:
    return len(await exported(admin, query))


@ensureDeferred
async def test_erase_a_person_everywhere(tmp_path):
    workdir = tmp_path / "server"
    workdir.mkdir()
    write_history(workdir / "data.json", secret_history(DEFAULT_COUNT))
    write_history(workdir / "data.rooms" / "maths.json", secret_history(MATHS_COUNT))
    # Never loaded before the erasure (maths is, by the first one).
    write_history(workdir / "data.rooms" / "art.json", secret_history(300))
    server = await Twistd.start(workdir, "--rooms=open")
    admin = server.admin
    try:
        # physics is loaded, and GOTHIC's newest messages are only in its
        # journal; maths is on disk only, never loaded.
        writer = await connect(f"{server.url}/physics")
        assert (await writer.register(GOTHIC))["status"] is True
        for i in range(20):
            assert (await writer.say(f"{SECRET} live {i}"))["status"] is True
        other = await connect(f"{server.url}/physics")
        assert (await other.register("bob"))["status"] is True
        assert (await other.say("bob stays"))["status"] is True
        assert files_holding(workdir, SECRET) == [
            "data.json",
            "data.rooms/art.json",
            "data.rooms/maths.json",
            "data.rooms/physics.json.journal",
        ]

        # A range first: maths only, seconds 300 to 599 (inclusive).
        since, until = START_MS + 300_000, START_MS + 599_000
        done = await cli(
            admin,
            "--json",
            "erase",
            GOTHIC,
            "--room",
            "maths",
            "--since",
            str(since),
            "--until",
            str(until),
            "--reason",
            "request of 2026-12-01",
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"erased": {"maths": 100}, "total": 100}
        assert await count(admin, f"?room=maths&nickname={quote(GOTHIC)}") == 667 - 100

        # Then everything of theirs, everywhere.
        done = await cli(admin, "--json", "erase", GOTHIC, "--reason", "GDPR art. 17")
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer == {
            "erased": {"": 3333, "art": 100, "maths": 567, "physics": 20},
            "total": 4020,
        }
        assert await count(admin, f"?nickname={quote(GOTHIC)}") == 0
        # Nothing of them in any file; everyone else's messages intact.
        assert files_holding(workdir, SECRET, GOTHIC) == []
        assert await count(admin, "?room=") == DEFAULT_COUNT - 3333
        assert await count(admin, "?room=maths") == MATHS_COUNT - 667
        assert await count(admin, "?room=physics") == 1
        assert await count(admin, "?nickname=bob") == 3333 + 100 + 666 + 1
        # One audit line per erasure, with the counts per room.
        output = server.child.output.decode()
        audits = [
            line for line in output.splitlines() if "audit: operator erase" in line
        ]
        assert len(audits) == 2, audits
        assert "4020 messages" in audits[1] and "/maths=567" in audits[1]
        assert "reason=GDPR art. 17" in audits[1]

        # What an operator may get wrong.
        for args, status, said in (
            (["x" * 101, "--reason", "r"], 1, b"(400)"),
            ([GOTHIC, "--room", "nosuch", "--reason", "r"], 1, b"(404)"),
            (
                [GOTHIC, "--since", "2000", "--until", "1000", "--reason", "r"],
                2,
                b"after",
            ),
            ([GOTHIC], 2, b"--reason"),
            ([GOTHIC, "--reason", " "], 1, b"reason cannot be blank"),
        ):
            refused = await cli(admin, "erase", *args)
            assert refused.returncode == status and said in refused.stderr, (
                args,
                refused.stderr,
            )
        writer.abort()
        other.abort()
    finally:
        await server.child.kill(signal.SIGTERM)
    # The clean stop leaves no trace of them either (send_ids, folds).
    assert files_holding(workdir, SECRET) == []


def test_the_test_data_is_what_it_says():
    """The counts above follow from the data: a third of each room."""
    found = secret_history(DEFAULT_COUNT)
    assert sum(1 for e in found if e["name"] == GOTHIC) == 3333
    maths = secret_history(MATHS_COUNT)
    window = [
        e
        for e in maths
        if e["name"] == GOTHIC and START_MS + 300_000 <= e["time"] <= START_MS + 599_000
    ]
    assert len(window) == 100
