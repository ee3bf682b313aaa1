"""The listener: a port that cannot be opened must stop twistd, at once or
later, and a stop before listening must not."""

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import globalLogPublisher

from chatbox.service import ListenerService


class FakeReactor:
    stopped = 0

    def stop(self) -> None:
        self.stopped += 1


class FakePort:
    def getHost(self):
        return "unix:/tmp/chat.sock"

    def stopListening(self):
        return succeed(None)


class Endpoint:
    def __init__(self, result):
        self.result = result

    def listen(self, factory):
        return self.result


def test_a_port_busy_at_once_is_raised_out_of_start_up():
    busy = CannotListenError("127.0.0.1", 9000, OSError(98, "Address already in use"))
    listener = ListenerService(
        Endpoint(fail(busy)), None, "ws", FakeReactor(), "admin API"
    )
    with pytest.raises(SystemExit) as stopped:
        listener.privilegedStartService()
    assert str(stopped.value) == (
        "chatbox: cannot start: admin API cannot listen on 127.0.0.1:9000: "
        "Address already in use"
    )


def test_a_later_failure_stops_the_reactor_and_fails_waiters(no_logged_failures):
    later: Deferred = Deferred()
    reactor = FakeReactor()
    listener = ListenerService(Endpoint(later), None, "ws", reactor)
    listener.startService()
    waiter = listener.listening()
    errors: list = []
    waiter.addErrback(errors.append)
    logged: list = []
    globalLogPublisher.addObserver(logged.append)
    try:
        later.errback(OSError("no such interface"))
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert reactor.stopped == 1
    assert len(errors) == 1
    assert listener.port is None
    # Twisted's endpoint service reports the failure with the legacy
    # log.err (an "Unhandled Error" line); ours says what happens next.
    [reported] = [e for e in logged if e.get("isError")]
    assert reported["failure"].check(OSError)
    assert any("could not listen" in e.get("log_format", "") for e in logged)
    assert no_logged_failures == [reported["failure"].getTraceback()]
    no_logged_failures.clear()


def test_stopping_before_listening_does_not_stop_the_reactor():
    reactor = FakeReactor()
    listener = ListenerService(Endpoint(Deferred()), None, "ws", reactor)
    listener.startService()
    listener.stopService()
    assert reactor.stopped == 0


def test_listening_fires_with_the_port_before_and_after():
    port = FakePort()
    later: Deferred = Deferred()
    listener = ListenerService(Endpoint(later), None, "ws", FakeReactor())
    listener.startService()
    early = listener.listening()
    later.callback(port)
    assert early.result is port
    assert listener.listening().result is port
    assert listener.stopService().result is None
