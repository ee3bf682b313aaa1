"""Fixtures: the real chatbox service, listening on port 0 in the test reactor
(tests/server.py holds the helpers behind them)."""

import gc
from pathlib import Path

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from tests.server import start_server


def pytest_collection_finish(session: pytest.Session) -> None:
    """Everything imported so far lives for the whole run: set it aside, so
    the gc.collect() after each test below only walks what tests made (it
    was half of the unit tests' time)."""
    gc.collect()
    gc.freeze()


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
