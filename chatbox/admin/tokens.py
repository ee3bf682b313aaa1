# -*- test-case-name: tests.unit.test_admin_tokens -*-
"""Who may use the operator API: the token file, and checking a token.

The file holds one operator per line, `NAME sha256:HEX`, HEX being the
SHA-256 of the token's UTF-8, so a copy of the file (a backup, a config
repository) lets nobody in. `#` starts a comment line; blank lines are
skipped. A line that is none of these refuses start-up, naming the line:
a typo must not silently lock an operator out, or in.

A presented token is hashed and compared with every entry by
hmac.compare_digest, without stopping at a match, so the time taken says
nothing about which entry, or how much of one, it matched.

The file is read again on SIGHUP (ReloadService, shared with the auth
keys and the TLS pair; on a thread: the reactor never reads files); a file
that has become bad is logged and the tokens already loaded stay in force.
"""

import hashlib
import hmac
import os
import re
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

__all__ = [
    "ReloadService",
    "TokenFileError",
    "TokenReloadService",
    "Tokens",
    "check_name",
    "hash_line",
    "new_token",
    "parse",
    "read_tokens",
]

log = Logger()

_LINE = re.compile(r"^(\S+)\s+sha256:([0-9a-fA-F]{64})$")
# The token's bits: 32 random bytes, URL-safe base64 (43 characters).
TOKEN_BYTES = 32


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Entry:
    name: str
    digest: bytes


def check_name(name: str) -> str | None:
    """Why `name` cannot be an operator name, if it cannot: it is the first
    word of its line, so it has no whitespace, and it is logged in every
    audit line, so it is printable; a colon would read as `sha256:`, a
    leading `#` as a comment."""
    if not name:
        return "an operator name cannot be empty"
    if len(name) > 64:
        return "an operator name has at most 64 characters"
    if any(c.isspace() for c in name) or not name.isprintable():
        return "an operator name has no spaces or control characters"
    if ":" in name:
        return "an operator name has no colon"
    if name.startswith("#"):
        return "an operator name cannot start with #"
    return None


def parse(text: str, where: str) -> list[Entry]:
    """The entries of a token file's text; TokenFileError names the line."""
    entries: list[Entry] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if number == 1:
            line = line.lstrip("\ufeff").strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise TokenFileError(
                f"{where} line {number}: expected 'NAME sha256:HEX' "
                "(64 hex digits), a # comment or a blank line"
            )
        name, digest = match.group(1), bytes.fromhex(match.group(2))
        why = check_name(name)
        if why is not None:
            raise TokenFileError(f"{where} line {number}: {why}")
        if digest in seen:
            raise TokenFileError(
                f"{where} line {number}: the same token as line {seen[digest]}"
            )
        seen[digest] = number
        entries.append(Entry(name, digest))
    return entries


def read_tokens(path: str) -> list[Entry]:
    """Read and parse the file (blocking: at start-up, or on a thread)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise TokenFileError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise TokenFileError(f"cannot read {path}: {e.strerror}") from None
    return parse(text, path)


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_line(name: str, token: str) -> str:
    """The token file's line for `token` (without the newline)."""
    return f"{name} sha256:{hashlib.sha256(token.encode()).hexdigest()}"


class Tokens:
    """The operators the file names, replaced whole on each reload."""

    def __init__(self, path: str, entries: list[Entry]) -> None:
        self.path = path
        self._entries = tuple(entries)

    @classmethod
    def load(cls, path: str) -> "Tokens":
        """At start-up, before the reactor runs; TokenFileError if bad."""
        return cls(path, read_tokens(path))

    def __len__(self) -> int:
        return len(self._entries)

    def operator(self, presented: bytes) -> str | None:
        """The operator whose token this is, or None. Every entry is compared,
        in constant time each, whatever matched."""
        digest = hashlib.sha256(presented).digest()
        found: str | None = None
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.digest):
                found = entry.name
        return found

    def reload(self) -> "Deferred[bool]":
        """Read the file again on a thread; True if the new tokens are in
        force. A bad file is logged, and the old tokens are kept."""

        def loaded(entries: list[Entry]) -> bool:
            self._entries = tuple(entries)
            log.info(
                "admin tokens reloaded from {path}: {count} operator token(s)",
                path=self.path,
                count=len(entries),
            )
            return True

        def failed(failure: Any) -> bool:
            failure.trap(TokenFileError)
            log.error(
                "admin tokens NOT reloaded, the previous ones stay in force: {why}",
                why=str(failure.value),
            )
            return False

        return deferToThread(read_tokens, self.path).addCallbacks(loaded, failed)


class ReloadService(Service):
    """Reloads files on SIGHUP while running (twistd installs no SIGHUP
    handler of its own): the admin tokens, the auth keys, the chat port's
    TLS pair (chatbox.endpoints.ServedCertificate.on_hangup), each a
    callable that reads on a thread, logs its own outcome and never fails
    (a bad file keeps what is in force). One handler for all,
    since a process has one SIGHUP; it only schedules the reloads on the
    reactor thread, the one safe thing to do in a signal handler. tap
    installs it even with nothing to reload: SIGHUP's default is to end
    the process, and `systemctl reload` must never stop the chat."""

    def __init__(self, reactor: Any, *reloads: Callable[[], Any]) -> None:
        self.reactor = reactor
        self.reloads = list(reloads)
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def _hangup(self, signum: int, frame: object) -> None:
        for reload in self.reloads:
            self.reactor.callFromThread(reload)
        if not self.reloads:
            self.reactor.callFromThread(self._nothing)

    def _nothing(self) -> None:
        log.info(
            "SIGHUP: nothing to reload (no --admin-tokens, auth keys or "
            "--tls-cert); still running"
        )

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None


class TokenReloadService(ReloadService):
    """Reloads the admin tokens on SIGHUP (and anything else added to
    `reloads`, such as the auth keys)."""

    def __init__(self, tokens: Tokens, reactor: Any) -> None:
        super().__init__(reactor, tokens.reload)
        self.tokens = tokens


def append_line(path: str, line: str) -> None:
    """Append `line` to the token file, creating it 0600; never rewrites what
    is there (offline, for `chatbox-admin new-token`)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            needs_newline = False
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        data = ("\n" if needs_newline else "") + line + "\n"
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
