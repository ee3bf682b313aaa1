"""The real chatbox service, listening on port 0 in the test reactor: the
helper every wire test starts servers with (fixtures in conftest.py use it)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import reactor

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
