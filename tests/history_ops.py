"""What tests/test_export.py, test_backup.py and test_erase.py share: big
histories written as files before a server starts (100k messages in a
second, where sending them would take minutes), a real twistd with its
admin API, and `chatbox-admin` run as the operator runs it."""

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from chatbox.admin.tokens import append_line, hash_line
from tests import process

TOKEN = "history-operator-token-0123456789abcdefghij"
ADMIN = re.compile(rb"admin API listening on (http://[^\s]+)")
# A nickname and a text in a script outside the BMP (4 bytes a character in
# UTF-8, a surrogate pair in UTF-16): what a byte or UTF-16 slip would break.
GOTHIC = "𐌰𐌻𐌹𐌺𐌰"
SECRET = "𠜎𠜱𠝹𠱓 the erased words 𠱸𠲖"
START_MS = 1_780_000_000_000  # 2026-05-28: well inside any test's clock


def v2_stamp(millis: int) -> str:
    """A v2 timestamp text (its zone does not matter: `time` is given)."""
    import time

    t = time.gmtime(millis / 1000)
    return time.strftime("%d/%m/%Y, %H:%M:%S", t)


def entry(message_id: int, name: str, content: str, millis: int, **mark: bool) -> dict:
    return {
        "id": message_id,
        "name": name,
        "content": content,
        "timestamp": v2_stamp(millis),
        "time": millis,
        **mark,
    }


def write_history(path: Path, entries: list[dict]) -> None:
    """A data.json (or a room's NAME.json) as chatbox folds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = ",\n".join(json.dumps(e, ensure_ascii=False) for e in entries)
    path.write_text(f"[\n{body}\n]\n" if entries else "[]\n", encoding="utf-8")


def messages(count: int, names: list[str], start_id: int = 1, text: str = "m") -> list:
    """`count` entries, names taking turns, one second apart."""
    return [
        entry(
            start_id + i,
            names[i % len(names)],
            f"{text} {start_id + i} {names[i % len(names)]}",
            START_MS + i * 1000,
        )
        for i in range(count)
    ]


def admin_args(workdir: Path) -> list[str]:
    tokens = workdir / "admin-tokens"
    if not tokens.exists():
        append_line(str(tokens), hash_line("operator", TOKEN))
    return [
        f"--admin-tokens={tokens}",
        "--admin-port=tcp:0:interface=127.0.0.1",
    ]


class Twistd:
    """A chatbox under twistd in `workdir` with its admin API on."""

    def __init__(self, child: process.ServerProcess) -> None:
        self.child = child
        found = ADMIN.search(child.output)
        assert found, child.output
        self.admin = found.group(1).decode()

    @property
    def port(self) -> int:
        return self.child.port

    @property
    def url(self) -> str:
        assert self.child.url is not None
        return self.child.url

    @classmethod
    async def start(cls, workdir: Path, *args: str) -> "Twistd":
        child = await process.start(workdir, *admin_args(workdir), *args)
        await child.wait_for(ADMIN.pattern)
        return cls(child)


def cli_env(url: str | None) -> dict[str, str]:
    env = process.child_env()
    env.pop("CHATBOX_ADMIN_TOKEN", None)
    env["CHATBOX_ADMIN_TOKEN"] = TOKEN
    if url is not None:
        env["CHATBOX_ADMIN_URL"] = url
    return env


def run_cli(url: str | None, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """`chatbox-admin ARGS` as a child process, blocking (call it on a
    thread while the server runs in this reactor: `cli`)."""
    result = subprocess.run(
        [sys.executable, "-m", "chatbox.admin.cli", *args],
        capture_output=True,
        env=cli_env(url),
        timeout=120,
        cwd=process.REPOSITORY,
        **kwargs,
    )
    assert TOKEN.encode() not in result.stdout + result.stderr
    return result


async def cli(
    url: str | None, *args: str, **kwargs: Any
) -> subprocess.CompletedProcess:
    return await deferToThread(run_cli, url, *args, **kwargs)


def lines_of(path: Path) -> list[dict]:
    with open(path, "rb") as f:
        return [json.loads(line) for line in f]


def without_ids(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "id"} for line in lines]


async def api(
    admin: str, method: str, path: str, body: Any = None
) -> tuple[int, bytes]:
    """One admin API request from this process (no CLI start-up: for the
    steps around what a test is about)."""
    headers = Headers({b"authorization": [f"Bearer {TOKEN}".encode()]})
    producer = None
    if body is not None:
        producer = FileBodyProducer(io.BytesIO(json.dumps(body).encode()))
        headers.addRawHeader(b"content-type", b"application/json")
    response = await Agent(reactor).request(
        method.encode(), (admin + path).encode(), headers, producer
    )
    return response.code, await readBody(response)


async def exported(admin: str, query: str = "") -> list[dict]:
    """GET /v1/export?QUERY's lines, parsed."""
    status, body = await api(admin, "GET", "/v1/export" + query)
    assert status == 200, body
    return [json.loads(line) for line in body.splitlines()]
