"""A real redis-server for the cluster tests, as a child process.

It keeps an append-only file fsync'd before every reply (`appendfsync
always`), the setting the README asks of production, so a test can kill it
with SIGKILL, start it again on the same port and folder, and expect every
acknowledged message back.
"""

import os
import shutil
import signal
import socket
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

REDIS_SERVER = shutil.which("redis-server")
READY = b"Ready to accept connections"


def require_redis() -> str:
    """scripts/test installs redis-server; there, its absence is a failure."""
    if REDIS_SERVER is None:
        if os.environ.get("CHATBOX_REQUIRE_REDIS"):
            pytest.fail("redis-server is not installed (scripts/test installs it)")
        pytest.skip("redis-server is not installed")
    return REDIS_SERVER


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Process(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ready: Deferred = Deferred()
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if READY in self.output and not self.ready.called:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(None)


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.binary = require_redis()
        self.workdir = workdir
        self.port = free_port()
        self.process: _Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = _Process()
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        reactor.spawnProcess(self.process, self.binary, args, env=None)
        await self.process.ready.addTimeout(30, reactor)

    async def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process is not None and not self.process.ended.called:
            self.process.transport.signalProcess(signum)
            await self.process.ended.addTimeout(30, reactor)

    async def restart(self) -> None:
        await self.kill()
        await self.start()
