"""Fixtures: the real chatbox service, listening on port 0 in the test reactor."""

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from chatbox import tap
from chatbox.service import ListenerService
from chatbox.wire.factory import ChatFactory
from tests.client import ChatClientProtocol, connect


@dataclass
class RunningServer:
    service: Any
    listener: ListenerService
    data: Path
    scheme: str = "ws"

    @property
    def factory(self) -> ChatFactory:
        return self.service.getServiceNamed("chat").factory

    @property
    def port(self) -> int:
        assert self.listener.port is not None
        return self.listener.port.getHost().port

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def client(self, **fields: Any) -> ChatClientProtocol:
        return await connect(self.url, **fields)

    async def user(self, name: str, **fields: Any) -> ChatClientProtocol:
        """A connected client registered as `name`."""
        client = await self.client(**fields)
        reply = await client.register(name)
        assert reply["status"] is True, reply
        return client

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()


def options(data: Path, *args: str) -> tap.Options:
    config = tap.Options()
    config.parseOptions(
        [
            "--port=tcp:0:interface=127.0.0.1",
            f"--data={data}",
            "--json-ping=0",
            # Tests pipeline bursts of requests and open connections by the
            # hundred from one address; tests/test_limits.py and
            # tests/test_hostile_http.py start servers with the limits they
            # exercise.
            "--rate=0",
            "--ip-send-rate=0",
            "--ip-name-rate=0",
            "--connection-rate=0",
            "--max-pending-per-ip=0",
            *args,
        ]
    )
    return config


async def start_server(data: Path, *args: str, scheme: str = "ws") -> RunningServer:
    service = tap.makeService(options(data, *args), reactor)
    service.startService()
    listener = service.getServiceNamed("listener")
    await listener.listening()
    return RunningServer(service, listener, data, scheme)


@pytest.fixture(autouse=True)
def no_logged_failures():
    """Fail any test during which something logged a failure: an unhandled
    error in a Deferred, or a fault chatbox caught but did not expect."""
    failures: list[str] = []

    def observe(event: dict) -> None:
        if "log_failure" in event:
            failures.append(event["log_failure"].getTraceback())

    globalLogPublisher.addObserver(observe)
    yield failures
    gc.collect()  # Unhandled errors in Deferreds are logged when collected.
    globalLogPublisher.removeObserver(observe)
    assert not failures, "logged failures:\n" + "\n".join(failures)


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return tmp_path / "data.json"


@pytest_twisted.async_yield_fixture
async def server(data_file: Path):
    running = await start_server(data_file)
    yield running
    await running.stop()
