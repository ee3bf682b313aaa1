"""chatbox under the real twistd, as a child process of the test.

The child listens on port 0; its log line "chatbox listening on ws://..."
tells the test where. Output is kept for assertions and failure messages.

The child runs this working tree's code (PYTHONPATH), not the copy pip
installed in .venv: a test of a change must not pass against the code from
before it.
"""

import os
import re
import shutil
import signal
import sys
import sysconfig
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

TWISTD = str(Path(sysconfig.get_path("scripts")) / "twistd")
HELD_TWISTD = [sys.executable, str(Path(__file__).with_name("held_twistd.py"))]
REPOSITORY = str(Path(__file__).resolve().parent.parent)
LISTENING = re.compile(rb"chatbox listening on (wss?://[^\s]+)")
START_TIMEOUT = 30


class ServerProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.url: str | None = None
        self.started: Deferred = Deferred()
        self.ended: Deferred = Deferred()
        self.exit_code: int | None = None
        self.signal: int | None = None
        self._awaited: list[tuple[re.Pattern, int, Deferred]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = LISTENING.search(self.output)
        if match and not self.started.called:
            self.url = match.group(1).decode()
            self.started.callback(self.url)
        for awaited in list(self._awaited):
            pattern, count, waiter = awaited
            if len(pattern.findall(self.output)) >= count:
                self._awaited.remove(awaited)
                waiter.callback(None)

    def wait_for(self, pattern: bytes, count: int = 1, timeout: float = 30) -> Deferred:
        """Fires once the output holds `pattern` `count` times."""
        compiled = re.compile(pattern)
        waiter: Deferred = Deferred()
        if len(compiled.findall(self.output)) >= count:
            waiter.callback(None)
        else:
            self._awaited.append((compiled, count, waiter))
        return waiter.addTimeout(timeout, reactor)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.exit_code = reason.value.exitCode
        self.signal = reason.value.signal
        if not self.started.called:
            self.started.errback(
                RuntimeError(f"chatbox exited: {self.output.decode(errors='replace')}")
            )
        self.ended.callback(self.exit_code)

    @property
    def port(self) -> int:
        assert self.url is not None, "not listening yet"
        return int(self.url.rsplit(":", 1)[1])

    @property
    def stopped_cleanly(self) -> bool:
        """Finished its whole shutdown and said so with exit status 0."""
        return self.exit_code == 0 and b"history saved" in self.output

    def release_writes(self) -> None:
        """Under `spawn(..., held=True)`: let every journal write through."""
        self.transport.closeStdin()

    def kill(self, signum: int = signal.SIGKILL) -> Deferred:
        if not self.ended.called:
            os.kill(self.transport.pid, signum)
        return self.ended.addTimeout(30, reactor)


def child_env() -> dict[str, str]:
    """The environment of a child that runs chatbox: this working tree's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = REPOSITORY
    return env


# Root as an operator's service user is: file modes apply to it (without
# these capabilities, a folder's mode refuses root too).
WITHOUT_OVERRIDES = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
    "--",
]


def spawn(
    workdir: Path, *args: str, held: bool = False, under: list[str] = ()
) -> ServerProcess:
    """Start `twistd -n chatbox` in `workdir` (its data.json lives there);
    `held`: with its journal writes held (see tests/held_twistd.py);
    `under`: a command that runs it (WITHOUT_OVERRIDES, say)."""
    process = ServerProcess()
    env = child_env()
    command = [*under, *(HELD_TWISTD if held else [TWISTD])]
    if under:
        command[0] = shutil.which(command[0]) or command[0]
    reactor.spawnProcess(
        process,
        command[0],
        [
            *command,
            "-n",
            "--pidfile=",
            "chatbox",
            "--port=tcp:0:interface=127.0.0.1",
            # Tests pipeline bursts and open connections by the hundred;
            # tests/test_limits.py and tests/test_hostile_http.py exercise
            # the limits.
            "--rate=0",
            "--ip-send-rate=0",
            "--ip-name-rate=0",
            "--connection-rate=0",
            "--max-pending-per-ip=0",
            *args,
        ],
        env=env,
        path=str(workdir),
    )
    return process


async def start(
    workdir: Path, *args: str, held: bool = False, under: list[str] = ()
) -> ServerProcess:
    process = spawn(workdir, *args, held=held, under=under)
    await process.started.addTimeout(START_TIMEOUT, reactor)
    return process
