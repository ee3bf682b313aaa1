# -*- test-case-name: tests.unit.test_admin_cli,tests.test_admin -*-
"""`chatbox-admin`: the operator API from a shell (the README's abuse
playbook shows it in use).

    chatbox-admin [--url URL] [--token-file F] [--json] COMMAND ...

The URL comes from --url, else CHATBOX_ADMIN_URL, else
http://127.0.0.1:9009; the token from --token-file (its first line), else
CHATBOX_ADMIN_TOKEN. The token is sent only in the Authorization header: it
is never printed, and requests follow no redirect and use no proxy, so it
goes nowhere but the URL given.

`token` prints the token it made (and with --link the chat links that
carry it) on stdout only; it is in no log line.

Output is one item per line, fields separated by tabs, for scripts; --json
prints the API's JSON instead. `export` writes JSON Lines (stdout or -o);
`import`, `backup` and `erase` say what they did on stderr; `restore` is
offline, like `new-token` (README "Operating chatbox"). Exit status: 0
done, 1 refused by the server (its reason on stderr), 2 a usage error, 3
the server could not be reached.

Standard library only: it runs wherever Python does, without the server's
dependencies.
"""

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, Any, NoReturn
from urllib.parse import quote, urlencode

__all__ = ["main", "parse_duration", "parse_time"]

DEFAULT_URL = "http://127.0.0.1:9009"
TIMEOUT = 60.0
OK, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class Failed(Exception):
    """Ends the command with `status`, saying `message` on stderr."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_duration(text: str) -> float:
    """`90`, `30s`, `10m`, `2h`, `7d` (and `1w`) as seconds above 0."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (90, 30s, 10m, 2h, 7d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not seconds > 0:
        raise ValueError("a duration is above 0")
    return int(seconds) if seconds == int(seconds) else seconds


def parse_time(text: str, now: float | None = None) -> int:
    """An ISO 8601 time (without a zone: this machine's local time), or a
    duration ago (`2h`), as epoch milliseconds."""
    try:
        ago = parse_duration(text)
    except ValueError:
        pass
    else:
        return int(((time.time() if now is None else now) - ago) * 1000)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2026-12-06T14:30) "
            "nor a duration ago (2h)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, as the operator reads a clock
    return int(moment.timestamp() * 1000)


def _room(text: str) -> str:
    """`/`, `` and `/NAME` or `NAME`: the API's "" (default room) or NAME,
    so a room as `users` prints it can be given back."""
    return text[1:] if text.startswith("/") else text


def _shown_room(room: str | None) -> str:
    if room is None:
        return "*"
    return "/" + room


def _when(ms: int | None) -> str:
    if ms is None:
        return "never"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sanction_line(s: dict[str, Any]) -> str:
    """id, target:value, room (* every room), until, by, reason."""
    return "\t".join(
        [
            str(s.get("id")),
            f"{s.get('target')}:{s.get('value')}",
            _shown_room(s.get("room")),
            _when(s.get("expires")),
            str(s.get("by")),
            str(s.get("reason")),
        ]
    )


# -- talking to the server --


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the token to wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _token(options: argparse.Namespace) -> str:
    if options.token_file:
        try:
            with open(options.token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise Failed(
                USAGE, f"cannot read the token file {options.token_file}: {e}"
            ) from None
        if not token:
            raise Failed(USAGE, f"the token file {options.token_file} is empty")
        return token
    token = os.environ.get("CHATBOX_ADMIN_TOKEN", "").strip()
    if not token:
        raise Failed(USAGE, "no token: set CHATBOX_ADMIN_TOKEN or give --token-file")
    return token


def request(
    options: argparse.Namespace, method: str, path: str, body: dict | None = None
) -> Any:
    """The API's JSON answer; Failed for a refusal or no answer."""
    data = None if body is None else json.dumps(body).encode()
    try:
        with _open(options, method, path, data) as response:
            raw = response.read()
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        raise Failed(UNREACHABLE, f"cannot reach {_url(options)}: {why}") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise Failed(REFUSED, _NOT_THE_API.format(url=_url(options))) from None


def _url(options: argparse.Namespace) -> str:
    url = (options.url or os.environ.get("CHATBOX_ADMIN_URL") or DEFAULT_URL).rstrip(
        "/"
    )
    if not url.startswith(("http://", "https://")):
        raise Failed(USAGE, f"--url must start with http:// or https://, not {url!r}")
    return url


def _open(
    options: argparse.Namespace,
    method: str,
    path: str,
    data: bytes | None = None,
    accept: str = "application/json",
) -> Any:
    """The open response (a refusal raised as Failed): for answers read
    whole, and for the streamed ones (export, backup) read as they come."""
    url = _url(options)
    call = urllib.request.Request(url + path, data=data, method=method)
    call.add_header("Authorization", f"Bearer {_token(options)}")
    call.add_header("Accept", accept)
    if data is not None:
        call.add_header("Content-Type", "application/json")
    try:
        return _opener().open(call, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        raise Failed(REFUSED, _refusal(e, url)) from None
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        raise Failed(UNREACHABLE, f"cannot reach {url}: {why}") from None


def _refusal(error: urllib.error.HTTPError, url: str) -> str:
    try:
        said = json.loads(error.read()).get("error")
    except (ValueError, AttributeError, OSError):
        said = None
    if isinstance(said, str):
        return f"refused ({error.code}): {said}"
    return f"refused ({error.code}): {error.reason}; {_NOT_THE_API.format(url=url)}"


_NOT_THE_API = (
    "not a JSON answer: is {url} the admin API (the server's --admin-port), "
    "not the chat port?"
)


# -- the commands: each sends its request and prints the answer --


def _print_lines(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


def cmd_users(options: argparse.Namespace) -> Any:
    path = "/v1/users"
    if options.room is not None:
        path += "?room=" + quote(_room(options.room), safe="")
    answer = request(options, "GET", path)
    return answer, [
        f"{_shown_room(u.get('room'))}\t{u.get('name')}\t{u.get('address')}"
        for u in answer.get("users", [])
    ]


def _with_room(body: dict, options: argparse.Namespace) -> dict:
    if options.room is not None:
        body["room"] = _room(options.room)
    return body


def cmd_kick(options: argparse.Namespace) -> Any:
    body = _with_room({"name": options.name, "reason": options.reason}, options)
    answer = request(options, "POST", "/v1/kick", body)
    kicked = answer.get("kicked")
    return answer, [
        f"kicked {kicked} connection(s) on this server; "
        "on a cluster every node closes its own"
    ]


def _sanction(options: argparse.Namespace, kind: str) -> Any:
    body: dict[str, Any] = {options.target: options.value, "reason": options.reason}
    if options.duration is not None:
        body["duration"] = options.duration
    if getattr(options, "force", False):
        body["force"] = True
    _with_room(body, options)
    answer = request(options, "POST", f"/v1/{kind}s", body)
    return answer, [_sanction_line(answer[kind])]


def cmd_ban(options: argparse.Namespace) -> Any:
    return _sanction(options, "ban")


def cmd_mute(options: argparse.Namespace) -> Any:
    return _sanction(options, "mute")


def cmd_bans(options: argparse.Namespace) -> Any:
    answer = request(options, "GET", "/v1/bans")
    return answer, [_sanction_line(s) for s in answer.get("bans", [])]


def cmd_mutes(options: argparse.Namespace) -> Any:
    answer = request(options, "GET", "/v1/mutes")
    return answer, [_sanction_line(s) for s in answer.get("mutes", [])]


def _lift(options: argparse.Namespace, kind: str) -> Any:
    answer = request(options, "DELETE", f"/v1/{kind}s/" + quote(options.id, safe=""))
    return answer, ["lifted\t" + _sanction_line(answer["lifted"])]


def cmd_unban(options: argparse.Namespace) -> Any:
    return _lift(options, "ban")


def cmd_unmute(options: argparse.Namespace) -> Any:
    return _lift(options, "mute")


def cmd_delete(options: argparse.Namespace) -> Any:
    body = _with_room({"ids": options.ids, "reason": options.reason}, options)
    answer = request(options, "POST", "/v1/messages/delete", body)
    return answer, [str(i) for i in answer.get("deleted", [])]


def cmd_delete_by(options: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"name": options.name, "reason": options.reason}
    if options.since is not None:
        body["since"] = options.since
    if options.until is not None:
        body["until"] = options.until
    _with_room(body, options)
    answer = request(options, "POST", "/v1/messages/delete", body)
    return answer, [str(i) for i in answer.get("deleted", [])]


def cmd_slow_mode(options: argparse.Namespace) -> Any:
    if options.seconds is None:
        answer = request(options, "GET", "/v1/slow-mode")
        rooms = answer.get("rooms", {})
        return answer, [f"{_shown_room(r)}\t{s:g}" for r, s in sorted(rooms.items())]
    body = _with_room({"seconds": options.seconds}, options)
    answer = request(options, "PUT", "/v1/slow-mode", body)
    return answer, [f"{_shown_room(answer.get('room'))}\t{answer.get('seconds'):g}"]


def cmd_announce(options: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"text": options.text}
    if options.all_rooms:
        body["all_rooms"] = True
    _with_room(body, options)
    answer = request(options, "POST", "/v1/announce", body)
    return answer, [
        f"{_shown_room(p.get('room'))}\t{p.get('id')}" for p in answer.get("posted", [])
    ]


def cmd_reserve(options: argparse.Namespace) -> Any:
    answer = request(options, "POST", "/v1/reserved", {"pattern": options.pattern})
    return answer, [str(answer.get("reserved"))]


def cmd_unreserve(options: argparse.Namespace) -> Any:
    path = "/v1/reserved/" + quote(options.pattern, safe="")
    answer = request(options, "DELETE", path)
    return answer, [str(answer.get("unreserved"))]


def cmd_reserved(options: argparse.Namespace) -> Any:
    answer = request(options, "GET", "/v1/reserved")
    return answer, [str(p) for p in answer.get("reserved", [])]


def _link(base: str, room: str, token: str) -> str:
    """The chat page of `room` with the token: BASE/ROOM?token=T (BASE/ for
    the default room). The bundled client takes it out of the address bar
    at once."""
    return f"{base}/{quote(room, safe='')}?token={token}"


def cmd_token(options: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"name": options.name, "days": options.days}
    if options.roles:
        body["roles"] = sorted(set(options.roles))
    if options.rooms:
        body["rooms"] = [_room(r) for r in options.rooms]
    answer = request(options, "POST", "/v1/tokens", body)
    token = answer["token"]
    rooms = answer.get("rooms")
    lines = [token]
    if options.link is not None:
        links = [_link(options.link, r, token) for r in (rooms or [""])]
        answer = {**answer, "links": links}
        lines += links
    where = "every room" if rooms is None else ", ".join(map(_shown_room, rooms))
    roles = ", ".join(answer.get("roles") or []) or "no roles"
    print(
        f"a token for {answer.get('name')!r} ({roles}) in {where}, until "
        f"{_when(answer.get('expires'))}. Give it only to them: whoever has it "
        "is them until then.",
        file=sys.stderr,
    )
    return answer, lines


def cmd_verified(options: argparse.Namespace) -> Any:
    answer = request(options, "GET", "/v1/verified")
    return answer, [
        "\t".join(
            [
                str(v.get("name")),
                "*"
                if v.get("rooms") is None
                else ",".join(map(_shown_room, v.get("rooms"))),
                str(v.get("by")),
                _when(v.get("at")),
            ]
        )
        for v in answer.get("verified", [])
    ]


def cmd_unverify(options: argparse.Namespace) -> Any:
    answer = request(options, "DELETE", "/v1/verified/" + quote(options.name, safe=""))
    return answer, [str(answer.get("unverified"))]


def cmd_tls_reload(options: argparse.Namespace) -> Any:
    """As SIGHUP, but answered: what is served now, or why the files on disk
    were refused (exit 1; the previous certificate stays)."""
    answer = request(options, "POST", "/v1/tls/reload")
    changed = "reloaded" if answer.get("changed") else "unchanged (same certificate)"
    return answer, [
        f"{changed}\t{answer.get('subject')}\tvalid until "
        f"{_when(answer.get('not_after'))}\t{answer.get('fingerprint')}"
    ]


def cmd_new_token(options: argparse.Namespace) -> Any:
    """Offline: no server is asked. Imported here, not at the top, so every
    other command runs on the standard library alone."""
    from chatbox.admin import tokens

    why = tokens.check_name(options.name)
    if why is not None:
        raise Failed(USAGE, why)
    path = options.tokens_file
    if os.path.exists(path):
        try:
            held = tokens.read_tokens(path)  # a bad file would refuse start-up
        except tokens.TokenFileError as e:
            raise Failed(REFUSED, f"not adding to a bad token file: {e}") from None
        if any(entry.name == options.name for entry in held):
            # Two lines of one name: the audit could not tell them apart,
            # and "remove the line" would be ambiguous.
            raise Failed(
                REFUSED,
                f"{path} already has an operator {options.name!r}; remove that "
                "line first (then SIGHUP the server), or choose another name",
            )
    token = tokens.new_token()
    try:
        tokens.append_line(path, tokens.hash_line(options.name, token))
    except OSError as e:
        raise Failed(REFUSED, f"cannot write {path}: {e.strerror}") from None
    print(
        f"added operator {options.name} to {path}; the server reads it on "
        "SIGHUP or restart. The token is shown only now:",
        file=sys.stderr,
    )
    return {"name": options.name, "token": token}, [token]


# -- history: export, import, backup, restore, erase --

STREAM_CHUNK = 64 * 1024
# An import batch stays under the API's 64 KiB body cap with room to spare.
BATCH_BYTES = 60_000
BATCH_MESSAGES = 1000
# A message is at most 4,000 characters: no line or array item of an
# export or a data.json comes near this, so a longer one is refused rather
# than read into memory.
MAX_ITEM = 1 << 20
READ_CHUNK = 1 << 18
PROGRESS_EVERY = 1.0


def _instant(text: str) -> int:
    """Epoch milliseconds (digits only), an ISO 8601 time or a duration
    ago (`2h`), as epoch milliseconds."""
    if text.isascii() and text.isdigit():
        return int(text)
    return parse_time(text)


def _cut_short(what: str, done: str) -> Failed:
    return Failed(
        REFUSED,
        f"the {what} was cut short after {done} (the server or the "
        "connection failed; its log says why); nothing of it should be "
        "taken as complete",
    )


def cmd_export(options: argparse.Namespace) -> Any:
    params: dict[str, Any] = {}
    if options.room is not None:
        params["room"] = _room(options.room)
    if options.nickname is not None:
        params["nickname"] = options.nickname
    for key in ("since", "until"):
        if getattr(options, key) is not None:
            params[key] = getattr(options, key)
    if "since" in params and "until" in params and params["since"] > params["until"]:
        raise Failed(USAGE, "--since is after --until")
    path = "/v1/export" + ("?" + urlencode(params) if params else "")
    if options.output is None:
        options.json = False  # stdout is the export's: nothing after it
    # A file is written beside its name and renamed once whole, so a
    # failed export never leaves a file that looks complete.
    partial = None if options.output is None else options.output + ".part"
    lines = 0
    try:
        with contextlib.ExitStack() as stack:
            if partial is None:
                out: IO[bytes] = sys.stdout.buffer
            else:
                out = stack.enter_context(open(partial, "wb"))
            response = stack.enter_context(
                _open(options, "GET", path, accept="application/x-ndjson")
            )
            while True:
                try:
                    chunk = response.read(STREAM_CHUNK)
                except (http.client.HTTPException, OSError):
                    raise _cut_short("export", f"{lines} lines") from None
                if not chunk:
                    break
                lines += chunk.count(b"\n")
                out.write(chunk)
            out.flush()
            if partial is not None:
                os.fsync(out.fileno())
        if partial is not None:
            os.replace(partial, options.output)
    except BrokenPipeError:
        if partial is not None:
            raise
        # Its reader (`| head`) has what it wanted: stop as quietly as
        # `cat` would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return {"exported": lines, "file": None}, []
    except OSError as e:
        raise Failed(
            REFUSED, f"cannot write {e.filename or 'the export'}: {e.strerror}"
        ) from None
    finally:
        if partial is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
    print(
        f"exported {lines} messages"
        + (f" to {options.output}" if options.output else ""),
        file=sys.stderr,
    )
    return {"exported": lines, "file": options.output}, []


# -- import --


def _message(record: Any, where: str) -> dict[str, Any]:
    """One stored entry (a data.json item or an export line, less its room)
    as the API's import message: its id is dropped (the room gives new
    ones), its mark kept. The server checks the rest in full."""
    if not isinstance(record, dict):
        raise Failed(REFUSED, f"{where}: a message is a JSON object")
    known = {"id", "name", "content", "timestamp", "time", "announcement", "verified"}
    unknown = sorted(set(record) - known)
    if unknown:
        raise Failed(REFUSED, f"{where}: unknown field {unknown[0][:40]!r}")
    message: dict[str, Any] = {}
    for key in ("name", "content", "timestamp"):
        if not isinstance(record.get(key), str):
            raise Failed(REFUSED, f"{where}: {key!r} is missing or not text")
        message[key] = record[key]
    if record.get("time") is not None:
        message["time"] = record["time"]
    for mark in ("announcement", "verified"):
        if record.get(mark) is True:
            message["mark"] = mark
    return message


def _array_items(f: IO[str]) -> Iterator[tuple[str, Any]]:
    """The items of a JSON array read piece by piece (a v2 data.json of a
    million messages is never held whole), with where each is."""
    decoder = json.JSONDecoder()
    buffer, position, line, eof, index = "", 0, 1, False, 0

    def more() -> bool:
        nonlocal buffer, position, eof
        if eof:
            return False
        chunk = f.read(READ_CHUNK)
        if not chunk:
            eof = True
            return False
        buffer = buffer[position:] + chunk
        position = 0
        return True

    def skip_space() -> str:
        nonlocal position, line
        while True:
            while position < len(buffer) and buffer[position] in " \t\r\n":
                if buffer[position] == "\n":
                    line += 1
                position += 1
            if position < len(buffer):
                return buffer[position]
            if not more():
                return ""

    if skip_space() != "[":
        raise Failed(REFUSED, "not a JSON array (a v2 data.json) nor JSON Lines")
    position += 1
    if skip_space() == "]":
        return
    while True:
        index += 1
        where = f"message #{index} (line {line})"
        while True:
            try:
                item, end = decoder.raw_decode(buffer, position)
                break
            except json.JSONDecodeError as e:
                if len(buffer) - position > MAX_ITEM:
                    raise Failed(
                        REFUSED, f"{where}: longer than {MAX_ITEM} characters"
                    ) from None
                if not more():
                    raise Failed(REFUSED, f"{where}: not JSON: {e.msg}") from None
        line += buffer.count("\n", position, end)
        position = end
        yield where, item
        following = skip_space()
        if following == "]":
            return
        if following != ",":
            raise Failed(REFUSED, f"after {where}: expected , or ]")
        position += 1
        skip_space()


def _line_items(f: IO[bytes]) -> Iterator[tuple[str, Any]]:
    number = 0
    while True:
        raw = f.readline(MAX_ITEM + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_ITEM:
            raise Failed(REFUSED, f"line {number}: longer than {MAX_ITEM} bytes")
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise Failed(REFUSED, f"line {number}: not JSON: {e}") from None
        yield f"line {number}", item


def _import_items(path: str) -> Iterator[tuple[str, str | None, dict[str, Any]]]:
    """(where, room or None, message) for each message of FILE: a v2
    data.json (a JSON array) or an export (JSON Lines)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below, as a generator)
    except OSError as e:
        raise Failed(USAGE, f"cannot read {path}: {e.strerror}") from None
    with f:
        first = f.read(READ_CHUNK).lstrip()[:1]
        f.seek(0)
        if first == b"[":
            import io

            items = _array_items(io.TextIOWrapper(f, encoding="utf-8"))
            lines = False
        else:
            items = _line_items(f)
            lines = True
        try:
            for where, record in items:
                room = None
                if lines:
                    if not isinstance(record, dict):
                        raise Failed(REFUSED, f"{where}: a message is a JSON object")
                    room = record.pop("room", None)
                    if not isinstance(room, str):
                        raise Failed(REFUSED, f"{where}: 'room' is missing or not text")
                yield where, room, _message(record, where)
        except UnicodeDecodeError:
            raise Failed(REFUSED, f"{path} is not UTF-8 text") from None


class _Importer:
    """Sends messages in batches under the body cap, one room at a time,
    and knows how many are stored (for the resume hint)."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.stored = options.skip
        self.batch: list[bytes] = []
        self.wheres: list[str] = []
        self.room: str | None = None
        self.size = 0
        self.said = time.monotonic()

    def add(self, where: str, room: str, message: dict[str, Any]) -> None:
        try:
            encoded = json.dumps(message, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise Failed(
                REFUSED, f"{where}: not valid text (a lone surrogate)"
            ) from None
        if self.batch and (
            room != self.room
            or self.size + len(encoded) + 1 > BATCH_BYTES
            or len(self.batch) >= BATCH_MESSAGES
        ):
            self.send()
        self.room = room
        self.batch.append(encoded)
        self.wheres.append(where)
        self.size += len(encoded) + 1

    def send(self) -> None:
        if not self.batch:
            return
        body = b'{"messages":[' + b",".join(self.batch) + b"]}"
        path = "/v1/import?" + urlencode({"room": self.room or ""})
        try:
            with _open(self.options, "POST", path, body) as response:
                answer = json.loads(response.read())
        except Failed as e:
            found = re.match(r"refused \(400\): message #(\d+): (.*)", e.message, re.S)
            if found and 0 < int(found.group(1)) <= len(self.wheres):
                e.message = f"{self.wheres[int(found.group(1)) - 1]}: {found.group(2)}"
            raise
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise Failed(UNREACHABLE, f"no answer to a batch: {e}") from None
        if len(answer.get("imported", [])) != len(self.batch):
            raise Failed(REFUSED, "the server stored a different number than sent")
        self.stored += len(self.batch)
        self.batch, self.wheres, self.size = [], [], 0
        if time.monotonic() - self.said >= PROGRESS_EVERY:
            self.said = time.monotonic()
            print(f"imported {self.stored} messages so far", file=sys.stderr)


def cmd_import(options: argparse.Namespace) -> Any:
    importer = _Importer(options)
    forced = None if options.room is None else _room(options.room)
    seen = 0
    try:
        for where, room, message in _import_items(options.file):
            seen += 1
            if seen <= options.skip:
                continue
            target = forced if forced is not None else (room or "")
            importer.add(where, target, message)
        importer.send()
    except (Failed, KeyboardInterrupt) as e:
        stopped = e if isinstance(e, Failed) else Failed(REFUSED, "interrupted")
        if importer.stored > options.skip:
            again = f"chatbox-admin import {options.file}"
            if options.room is not None:
                again += f" --room {options.room}"
            stopped.message += (
                f"\nthe first {importer.stored} messages of {options.file} are "
                f"stored; once the cause is fixed, go on with: {again} "
                f"--skip {importer.stored}"
            )
        raise stopped from None
    print(f"imported {importer.stored - options.skip} messages", file=sys.stderr)
    return {"imported": importer.stored - options.skip}, []


# -- backup and restore --

MANIFEST = "MANIFEST.json"
DEFAULT_FILE = "data.json"
ROOMS_FOLDER = "data.rooms"
RULES_FILE = "data.moderation.json"


def _fsync_folder(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _BackupFolder:
    """The one-process layout written into a new folder: each file as a
    hidden temporary, fsync'd, then renamed; MANIFEST.json last, so a
    folder without it is no backup. `discard` removes all of it."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.made = not os.path.exists(folder)
        self.written: list[str] = []  # relative paths, temporaries included
        self.files: dict[str, str] = {}  # relative path -> sha256
        self.rooms: list[dict[str, Any]] = []
        self.current = ""  # the file being written, for an error
        self._room: str | None = None
        self._file: IO[bytes] | None = None
        self._hash: Any = None
        self._count = 0
        if not self.made:
            if not os.path.isdir(folder):
                raise Failed(USAGE, f"{folder} exists and is not a folder")
            if os.listdir(folder):
                raise Failed(
                    USAGE,
                    f"{folder} is not empty: a backup goes into a new folder "
                    "(an old backup is never overwritten)",
                )
        os.makedirs(folder, exist_ok=True)

    def _path(self, relative: str) -> str:
        return os.path.join(self.folder, relative)

    def _create(self, relative: str) -> IO[bytes]:
        temporary = relative + ".tmp"
        self.current = relative
        if os.sep in relative and not os.path.isdir(self._path(ROOMS_FOLDER)):
            os.mkdir(self._path(ROOMS_FOLDER))
            self.written.append(ROOMS_FOLDER)
        self.written.append(temporary)
        self._hash = hashlib.sha256()
        return open(self._path(temporary), "wb")

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._hash.update(data)

    def _close(self, relative: str) -> str:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._path(relative + ".tmp"), self._path(relative))
        self.written.append(relative)
        digest = self._hash.hexdigest()
        self.files[relative] = digest
        return digest

    @staticmethod
    def relative(room: str) -> str:
        if room == "":
            return DEFAULT_FILE
        if not room or "/" in room or room.startswith(".") or "\0" in room:
            raise Failed(REFUSED, f"the server named a room {room!r} no file can hold")
        return os.path.join(ROOMS_FOLDER, room + ".json")

    def begin(self, room: str) -> None:
        self._room = room
        self._count = 0
        self._file = self._create(self.relative(room))
        self._write(b"[")

    def entry(self, line: bytes) -> None:
        if self._file is None:
            raise Failed(REFUSED, "the backup stream sent a message outside a room")
        self._write((b"\n" if self._count == 0 else b",\n") + line)
        self._count += 1

    def end(self, control: dict[str, Any]) -> None:
        room = self._room
        if self._file is None or control.get("room") != room:
            raise Failed(REFUSED, "the backup stream's rooms do not match")
        if control.get("count") != self._count:
            raise Failed(
                REFUSED,
                f"room {room!r}: the server sent {self._count} of "
                f"{control.get('count')} messages",
            )
        self._write(b"\n]\n" if self._count else b"]\n")
        relative = self.relative(room)
        digest = self._close(relative)
        self.rooms.append(
            {
                "room": room,
                "file": relative,
                "messages": self._count,
                "last_id": control.get("last"),
                "sha256": digest,
            }
        )
        self._room = None

    def rules(self, rules: Any) -> None:
        self._file = self._create(RULES_FILE)
        self._write(json.dumps(rules, ensure_ascii=False).encode() + b"\n")
        self._close(RULES_FILE)

    def finish(self, done: dict[str, Any], took: float) -> dict[str, Any]:
        if self._file is not None:
            raise Failed(REFUSED, "the backup stream ended inside a room")
        manifest = {
            "format": 1,
            "created": _when(int(time.time() * 1000)),
            "started_ms": done.get("started"),
            "server_version": done.get("version"),
            "seconds": round(took, 3),
            "rooms": self.rooms,
            "files": dict(sorted(self.files.items())),
        }
        self._file = self._create(MANIFEST)
        self._write(json.dumps(manifest, indent=1, ensure_ascii=False).encode() + b"\n")
        self._close(MANIFEST)
        if os.path.isdir(self._path(ROOMS_FOLDER)):
            _fsync_folder(self._path(ROOMS_FOLDER))
        _fsync_folder(self.folder)
        return manifest

    def discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        for relative in reversed(self.written):
            path = self._path(relative)
            with contextlib.suppress(OSError):
                if os.path.isdir(path):
                    os.rmdir(path)
                else:
                    os.unlink(path)
        if self.made:
            with contextlib.suppress(OSError):
                os.rmdir(self.folder)


def cmd_backup(options: argparse.Namespace) -> Any:
    started = time.monotonic()
    folder = _BackupFolder(options.dir)
    done = None
    try:
        with _open(
            options, "GET", "/v1/backup", accept="application/x-ndjson"
        ) as response:
            while True:
                try:
                    line = response.readline(MAX_ITEM)
                except (http.client.HTTPException, OSError):
                    raise _cut_short("backup", "part of it") from None
                if not line:
                    break
                if not line.endswith(b"\n"):
                    raise _cut_short("backup", "part of a line")
                line = line[:-1]
                if not line.startswith(b'{"backup":'):
                    folder.entry(line)
                    continue
                control = json.loads(line)
                kind = control.get("backup")
                if kind == "room":
                    folder.begin(control.get("room"))
                elif kind == "end":
                    folder.end(control)
                elif kind == "moderation":
                    folder.rules(control.get("rules"))
                elif kind == "done":
                    done = control
        if done is None:
            raise _cut_short("backup", "part of it")
        manifest = folder.finish(done, time.monotonic() - started)
    except OSError as e:
        folder.discard()
        where = e.filename or os.path.join(options.dir, folder.current)
        raise Failed(
            REFUSED,
            f"backup failed: cannot write {where}: {e.strerror}; nothing of it "
            f"was kept in {options.dir}",
        ) from None
    except BaseException:
        folder.discard()
        raise
    total = sum(room["messages"] for room in manifest["rooms"])
    print(
        f"backed up {total} messages in {len(manifest['rooms'])} rooms and the "
        f"rules to {options.dir} in {manifest['seconds']:.1f} s",
        file=sys.stderr,
    )
    return manifest, [
        f"{_shown_room(room['room'])}\t{room['messages']}\t{room['last_id']}"
        for room in manifest["rooms"]
    ]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(READ_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checked_backup(folder: str) -> dict[str, Any]:
    """The manifest of a whole, unchanged backup (Failed otherwise)."""
    try:
        with open(os.path.join(folder, MANIFEST), "rb") as f:
            manifest = json.load(f)
        files = manifest["files"]
        assert isinstance(files, dict) and isinstance(manifest["rooms"], list)
    except FileNotFoundError:
        raise Failed(
            USAGE,
            f"{folder} holds no {MANIFEST}: not a backup, or one that never finished",
        ) from None
    except (OSError, ValueError, KeyError, AssertionError, TypeError) as e:
        raise Failed(
            USAGE, f"{folder}/{MANIFEST} is not a backup's manifest: {e}"
        ) from None
    for relative, digest in files.items():
        parts = relative.split("/")
        if relative not in (DEFAULT_FILE, RULES_FILE) and not (
            len(parts) == 2
            and parts[0] == ROOMS_FOLDER
            and parts[1].endswith(".json")
            and not parts[1].startswith(".")
        ):
            raise Failed(USAGE, f"the manifest names {relative!r}, not a backup file")
        path = os.path.join(folder, relative)
        try:
            found = _sha256(path)
        except OSError as e:
            raise Failed(REFUSED, f"cannot read {path}: {e.strerror}") from None
        if found != digest:
            raise Failed(
                REFUSED,
                f"{path} is not what the backup wrote (sha256 differs): damaged "
                "or edited; restore nothing from this folder",
            )
    return manifest


def _write_durably(target: str, chunks: Iterable[bytes], mode: int) -> None:
    """`target` holds these bytes, all or nothing, surviving a power cut (a
    temporary fsync'd and renamed, the folder fsync'd), written in pieces:
    a history of millions of messages is never held whole."""
    temporary = target + ".tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with open(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(os.path.dirname(target))


def _pieces(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(READ_CHUNK), b"")


def history_layout(data: str) -> dict[str, Any]:
    """The files of one process's history at --data `data`, as the server
    names them (chatbox.local: datafile, rooms, moderation; the admin layer
    may not import a backend, so tests/unit/test_admin_history.py checks
    that the two agree): its rooms folder, its rules file, and the default
    room's own files besides the lock."""
    base = data[: -len(".json")] if data.endswith(".json") else data
    return {
        "rooms": base + ".rooms",
        "rules": base + ".moderation.json",
        "own": [data, data + ".journal", data + ".journal.old", data + ".sends"],
        "lock": data + ".lock",
    }


def _hold_history(lock_path: str, data: str) -> int:
    """The flock a running chatbox holds on its history (its HistoryLock):
    taken here, so a restore never writes under a running server, and no
    server starts on files half restored. Returns the descriptor."""
    import fcntl  # Unix only, like the server's lock

    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).strip().decode("ascii", "replace")
        os.close(fd)
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise Failed(
            REFUSED,
            f"{data} is in use by another chatbox{who}; stop it before restoring",
        ) from None
    return fd


def cmd_restore(options: argparse.Namespace) -> Any:
    """Offline: writes the one-process files for --data."""
    manifest = _checked_backup(options.dir)
    data = os.path.abspath(options.data)
    if os.path.islink(data):  # the server follows it too
        data = os.path.realpath(data)
    if not os.path.isdir(os.path.dirname(data)):
        raise Failed(USAGE, f"no folder {os.path.dirname(data)} for --data")
    layout = history_layout(data)
    rooms, rules = layout["rooms"], layout["rules"]
    lock = _hold_history(layout["lock"], data)
    try:
        present = [path for path in (*layout["own"], rules) if os.path.exists(path)]
        # The bytes a crash interrupted, kept beside the history: old text
        # too, which a restore over it (after an erasure, say) must not keep.
        folder, stem = os.path.split(data)
        present += sorted(
            os.path.join(folder, name)
            for name in os.listdir(folder)
            if name.startswith(stem + ".torn-")
        )
        if os.path.isdir(rooms):
            present += [
                os.path.join(rooms, name)
                for name in sorted(os.listdir(rooms))
                if not name.endswith(".lock")
            ]
        if present and not options.force:
            raise Failed(
                REFUSED,
                f"{data} already has history ({', '.join(present[:5])}"
                + (", ..." if len(present) > 5 else "")
                + "); restoring would replace it: add --force to do so",
            )
        for path in present:
            if os.path.isdir(path):
                raise Failed(REFUSED, f"{path} is a folder; move it away first")
            os.unlink(path)
        targets = {DEFAULT_FILE: data, RULES_FILE: rules}
        for relative in manifest["files"]:
            target = targets.get(relative) or os.path.join(
                rooms, relative.split("/")[1]
            )
            os.makedirs(os.path.dirname(target), exist_ok=True)
            _write_durably(
                target,
                _pieces(os.path.join(options.dir, relative)),
                0o600 if relative == RULES_FILE else 0o644,
            )
        if DEFAULT_FILE not in manifest["files"]:
            _write_durably(data, [b"[]\n"], 0o644)
    except OSError as e:
        raise Failed(
            REFUSED, f"restore failed: {e}; start nothing on {data} until it is done"
        ) from None
    finally:
        os.close(lock)
    total = sum(room.get("messages", 0) for room in manifest["rooms"])
    print(
        f"restored {total} messages in {len(manifest['rooms'])} rooms and the "
        f"rules from {options.dir} (made {manifest.get('created')}) into {data}. "
        "Next: start chatbox with the same --data.",
        file=sys.stderr,
    )
    return {"restored": total, "rooms": len(manifest["rooms"]), "data": data}, []


def cmd_erase(options: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"name": options.name, "reason": options.reason}
    for key in ("since", "until"):
        if getattr(options, key) is not None:
            body[key] = getattr(options, key)
    if "since" in body and "until" in body and body["since"] > body["until"]:
        raise Failed(USAGE, "--since is after --until")
    _with_room(body, options)
    answer = request(options, "POST", "/v1/erase", body)
    erased = answer.get("erased", {})
    lines = [f"{_shown_room(room)}\t{count}" for room, count in erased.items()]
    print(f"erased {answer.get('total')} messages", file=sys.stderr)
    return answer, lines


# -- the command line --


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser that raises ValueError, so its
    message is what argparse prints."""

    def parsed(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parsed


_duration = _argument(parse_duration)
_moment = _argument(parse_time)
_instant_type = _argument(_instant)


def _count(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a count")
    return int(text)


def _message_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a message id")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError("seconds are 0 (off) or more")
    return int(value) if value == int(value) else value


def _days(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 366:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days, 1 to 366")
    return int(text)


def _base(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not the chat's address (http://HOST:PORT or https://...)"
        )
    return text.rstrip("/")


def _common() -> argparse.ArgumentParser:
    """Options any command also takes after its name (`bans --json`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"the admin API (default: $CHATBOX_ADMIN_URL, else {DEFAULT_URL})",
    )
    common.add_argument(
        "--token-file",
        default=argparse.SUPPRESS,
        help="file whose first line is the token (default: $CHATBOX_ADMIN_TOKEN)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the API's JSON instead of lines",
    )
    return common


def parser() -> argparse.ArgumentParser:
    common = _common()
    top = argparse.ArgumentParser(
        prog="chatbox-admin",
        parents=[common],
        description="Operate a chatbox server through its admin API: kick, ban, "
        "mute, delete messages, slow mode, announcements, reserved names, "
        "tokens for verified nicknames; export, import, back up and restore "
        "history, erase a person's messages.",
        epilog="Exit status: 0 done, 1 refused by the server, 2 usage error, "
        "3 server unreachable. Durations: 90, 30s, 10m, 2h, 7d. Times: ISO 8601 "
        "(local time unless a zone is given) or a duration ago (2h). Rooms: / "
        "is the default room, /NAME or NAME another.",
    )
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, run: Callable[[argparse.Namespace], Any], text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=text, description=text)
        sub.set_defaults(run=run)
        return sub

    def room(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("--room", metavar="R", help=what)

    def reason(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--reason",
            required=True,
            metavar="S",
            help="why (at most 500 characters): logged, and shown to the user",
        )

    sub = command("users", cmd_users, "List who is connected to this node.")
    room(sub, "only this room (/ is the default room)")

    sub = command("kick", cmd_kick, "Close a nickname's connections (code 4001).")
    sub.add_argument("name", metavar="NAME", help="nickname (and look-alikes)")
    room(sub, "only in this room (default: every room)")
    reason(sub)

    for kind, text in (
        ("ban", "Ban a nickname (and look-alikes) or an address or CIDR."),
        ("mute", "Refuse a nickname's or an address's sends for a while."),
    ):
        sub = command(kind, cmd_ban if kind == "ban" else cmd_mute, text)
        sub.add_argument("target", choices=("name", "address"), help="what VALUE is")
        sub.add_argument("value", metavar="VALUE", help="nickname, address or CIDR")
        sub.add_argument(
            "--for",
            dest="duration",
            type=_duration,
            metavar="D",
            required=kind == "mute",
            help="how long (90, 30s, 10m, 2h, 7d)"
            + ("; without it the ban never ends" if kind == "ban" else ""),
        )
        room(sub, "only in this room (default: every room)")
        if kind == "ban":
            sub.add_argument(
                "--force",
                action="store_true",
                help="ban even an address range wider than /8 (IPv4) or /16 "
                "(IPv6), or one holding this admin client's own address",
            )
        reason(sub)

    command("bans", cmd_bans, "List bans in force.")
    command("mutes", cmd_mutes, "List mutes in force.")
    for kind, run in (("unban", cmd_unban), ("unmute", cmd_unmute)):
        sub = command(kind, run, f"Lift a {kind[2:]} by its id.")
        sub.add_argument("id", metavar="ID", help=f"as `{kind[2:]}s` lists it")

    sub = command("delete", cmd_delete, "Delete messages by id, from every copy.")
    room(sub, "the messages' room (default: the default room)")
    sub.add_argument("ids", metavar="ID", nargs="+", type=_message_id)
    reason(sub)

    sub = command(
        "delete-by", cmd_delete_by, "Delete a nickname's messages over a time range."
    )
    sub.add_argument("name", metavar="NAME", help="nickname (and look-alikes)")
    room(sub, "the messages' room (default: the default room)")
    sub.add_argument(
        "--since", type=_moment, metavar="T", help="from (ISO 8601, or 2h ago)"
    )
    sub.add_argument(
        "--until", type=_moment, metavar="T", help="to (ISO 8601, or 2h ago)"
    )
    reason(sub)

    sub = command(
        "slow-mode",
        cmd_slow_mode,
        "Allow one message per SECONDS per person in a room (0: off); "
        "without SECONDS, list the rooms in slow mode.",
    )
    room(sub, "the room (default: the default room)")
    sub.add_argument("seconds", metavar="SECONDS", nargs="?", type=_seconds)

    sub = command("announce", cmd_announce, "Post a message from the announcer.")
    where = sub.add_mutually_exclusive_group()
    where.add_argument("--room", metavar="R", help="the room (default: the default)")
    where.add_argument(
        "--all-rooms", action="store_true", help="every room loaded on this node"
    )
    sub.add_argument("text", metavar="TEXT")

    sub = command("reserve", cmd_reserve, "Reserve nicknames (* and ? globs).")
    sub.add_argument("pattern", metavar="PATTERN")
    sub = command("unreserve", cmd_unreserve, "Free a reserved pattern.")
    sub.add_argument("pattern", metavar="PATTERN")
    command("reserved", cmd_reserved, "List reserved patterns.")

    sub = command(
        "token",
        cmd_token,
        "Make a token that verifies NAME (signed with the server's "
        "--auth-secret) and print it; from then on nobody can take NAME "
        "without a token, in the token's rooms. With --link, also print the "
        "chat link to open, one per room.",
    )
    sub.add_argument("name", metavar="NAME", help="the nickname, as people see it")
    sub.add_argument(
        "--role",
        dest="roles",
        action="append",
        choices=("moderator",),
        help="moderator: may delete, kick, mute and set slow mode in the "
        "token's rooms, from the chat page",
    )
    sub.add_argument(
        "--room",
        dest="rooms",
        action="append",
        metavar="R",
        help="good only in this room (/ is the default room); repeat for "
        "more; without it, every room",
    )
    sub.add_argument(
        "--days",
        type=_days,
        default=30,
        metavar="N",
        help="days until the token expires (1 to 366, default 30); a token "
        "cannot be taken back before, short of changing the secret",
    )
    sub.add_argument(
        "--link",
        type=_base,
        metavar="BASE",
        help="the chat's address as people open it, such as "
        "http://chat.school.example:9000: prints BASE/ROOM?token=TOKEN after "
        "the token, for each of its rooms (BASE/?token=... for the default "
        "room or a token good everywhere)",
    )

    command(
        "verified",
        cmd_verified,
        "List verified nicknames: name, rooms (* every room), by whom, since when.",
    )
    sub = command(
        "unverify",
        cmd_unverify,
        "Let anyone take a verified nickname again (tokens for it still "
        "work until they expire, and verify it again when shown).",
    )
    sub.add_argument("name", metavar="NAME")

    command(
        "tls-reload",
        cmd_tls_reload,
        "Read the chat port's --tls-cert/--tls-key again (as SIGHUP does) and "
        "print the certificate now served; a pair that cannot be served is "
        "refused with the reason, and the previous one stays.",
    )

    sub = command(
        "export",
        cmd_export,
        "Write history as JSON Lines (one stored message per line, with its "
        "room) while the server runs.",
    )
    room(sub, "only this room (default: every room)")
    sub.add_argument("--nickname", metavar="N", help="only this person's messages")
    sub.add_argument(
        "--since",
        type=_instant_type,
        metavar="T",
        help="from (epoch ms, ISO 8601 or 2h ago)",
    )
    sub.add_argument("--until", type=_instant_type, metavar="T", help="to (inclusive)")
    sub.add_argument(
        "-o", "--output", metavar="FILE", help="write here (default: stdout)"
    )

    sub = command(
        "import",
        cmd_import,
        "Append messages from a v2 data.json or an export to rooms, with new "
        "ids (each export line's room unless --room).",
    )
    sub.add_argument("file", metavar="FILE")
    room(sub, "into this room (default: each line's, or the default room)")
    sub.add_argument(
        "--skip",
        type=_count,
        default=0,
        metavar="N",
        help="pass over the first N messages (to resume an import that stopped)",
    )

    sub = command(
        "backup",
        cmd_backup,
        "Copy every room's history and the rules into a new folder DIR, as "
        "one server's files (data.json, data.rooms/, data.moderation.json) "
        "with MANIFEST.json.",
    )
    sub.add_argument("dir", metavar="DIR")

    sub = command(
        "restore",
        cmd_restore,
        "Offline, the server stopped: write a backup's files for --data.",
    )
    sub.add_argument("dir", metavar="DIR")
    sub.add_argument(
        "--data", required=True, metavar="PATH", help="the server's --data"
    )
    sub.add_argument(
        "--force",
        action="store_true",
        help="replace the history already there (it is deleted)",
    )

    sub = command(
        "erase",
        cmd_erase,
        "Delete every message of a nickname (and look-alikes) in every room, "
        "or one, over a time range: gone from every file.",
    )
    sub.add_argument("name", metavar="NAME")
    room(sub, "only this room (default: every room)")
    sub.add_argument(
        "--since",
        type=_instant_type,
        metavar="T",
        help="from (epoch ms, ISO 8601 or 2h ago)",
    )
    sub.add_argument("--until", type=_instant_type, metavar="T", help="to (inclusive)")
    reason(sub)

    sub = command(
        "new-token",
        cmd_new_token,
        "Make an operator token (offline): print it once, append its hash "
        "to the token file (mode 0600).",
    )
    sub.add_argument("name", metavar="NAME", help="operator name, as audit lines say")
    sub.add_argument("--tokens-file", required=True, metavar="F")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    options = parser().parse_args(argv)
    for name, default in (("url", None), ("token_file", None), ("json", False)):
        if not hasattr(options, name):
            setattr(options, name, default)
    try:
        answer, lines = options.run(options)
    except Failed as e:
        print(f"chatbox-admin: {e.message}", file=sys.stderr)
        return e.status
    if options.json:
        print(json.dumps(answer, ensure_ascii=False))
    else:
        _print_lines(lines)
    return OK


def run() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    run()
