"""Fixtures: the real chatbox service, listening on port 0 in the test reactor
(tests/server.py holds the helpers behind them)."""

import gc
from pathlib import Path

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from tests.server import start_server


def pytest_collection_finish(session: pytest.Session) -> None:
    """Everything imported so far lives for the whole run: set it aside, so
    the gc.collect() after each test below only walks what tests made (it
    was half of the unit tests' time)."""
    gc.collect()
    gc.freeze()


def logged_failure(event: dict) -> str | None:
    """What a log event says went wrong, if it is an error report: a
    failure logged with twisted.logger (`log_failure`: Logger.failure, an
    unhandled error in a Deferred), or a legacy twisted.python.log error
    (`isError`, with a `failure` for log.err and Twisted's own "Unhandled
    Error" lines). Legacy events reach the new publisher without
    `log_failure`, so checking that key alone misses them."""
    failure = event.get("log_failure") or event.get("failure")
    if failure is not None:
        return failure.getTraceback()
    if event.get("isError"):
        return formatEvent(event) or repr(event)
    return None


@pytest.fixture(autouse=True)
def no_logged_failures():
    """Fail any test during which something logged a failure: an unhandled
    error in a Deferred, a fault chatbox caught but did not expect, or a
    legacy log.err (Twisted's own "Unhandled Error"). A test that causes
    one on purpose asserts on this list and clears it."""
    failures: list[str] = []

    def observe(event: dict) -> None:
        failure = logged_failure(event)
        if failure is not None:
            failures.append(failure)

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
