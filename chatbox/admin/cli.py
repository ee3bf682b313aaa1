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
prints the API's JSON instead. Exit status: 0 done, 1 refused by the server
(its reason on stderr), 2 a usage error, 3 the server could not be reached.

Standard library only: it runs wherever Python does, without the server's
dependencies.
"""

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import quote

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
    url = (options.url or os.environ.get("CHATBOX_ADMIN_URL") or DEFAULT_URL).rstrip(
        "/"
    )
    if not url.startswith(("http://", "https://")):
        raise Failed(USAGE, f"--url must start with http:// or https://, not {url!r}")
    data = None if body is None else json.dumps(body).encode()
    call = urllib.request.Request(url + path, data=data, method=method)
    call.add_header("Authorization", f"Bearer {_token(options)}")
    call.add_header("Accept", "application/json")
    if data is not None:
        call.add_header("Content-Type", "application/json")
    try:
        with _opener().open(call, timeout=TIMEOUT) as response:
            raw = response.read()
    except urllib.error.HTTPError as e:
        raise Failed(REFUSED, _refusal(e, url)) from None
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        raise Failed(UNREACHABLE, f"cannot reach {url}: {why}") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise Failed(REFUSED, _NOT_THE_API.format(url=url)) from None


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


# -- the command line --


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _moment(text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
        "tokens for verified nicknames.",
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
