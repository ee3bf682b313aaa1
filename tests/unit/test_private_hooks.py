"""What chatbox relies on beyond Autobahn's and Twisted's public API.

Each hook is explained where it is used (marked "Private hook"). Each test
here fails, naming the hook and the file that relies on it, if an Autobahn
or Twisted upgrade removes or renames it: read the comment there before
upgrading. They check that the attribute is there, that it takes the
arguments chatbox passes, and where it can be seen without a socket, that
it still does what chatbox relies on.
"""

import inspect
import socket
from collections.abc import Callable, Iterator

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from twisted.application import app
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import tcp
from twisted.internet.base import ReactorBase
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols import basic, policies
from twisted.web import http

from chatbox.service import ListenerService
from chatbox.wire.backpressure import PendingOutput
from chatbox.wire.protocol import ChatProtocol

PROTOCOL = "chatbox/wire/protocol.py"
FACTORY = "chatbox/wire/factory.py"
BACKPRESSURE = "chatbox/wire/backpressure.py"
SERVICE = "chatbox/service.py"


def broken(hook: str, where: str, what: str) -> str:
    return (
        f"private hook {hook}, relied on by {where}: {what}. An Autobahn or "
        f"Twisted upgrade changed it; see the comment at its use in {where}."
    )


def takes(function: Callable, *args: object, **kwargs: object) -> bool:
    """Whether `function` accepts these arguments (self already bound)."""
    try:
        inspect.signature(function).bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def source(thing: object) -> str:
    return inspect.getsource(thing)  # type: ignore[arg-type]


@pytest.fixture
def tcp_transport() -> Iterator[tcp.Connection]:
    """A real Twisted TCP transport over a socket pair, in a MemoryReactor."""
    ours, theirs = socket.socketpair()
    transport = tcp.Connection(ours, Protocol(), reactor=MemoryReactor())
    transport.connected = 1
    try:
        yield transport
    finally:
        ours.close()
        theirs.close()


# -- chatbox/wire/protocol.py --


def test_producer_take_over(tcp_transport):
    hook = "WebSocketServerProtocol.registerProducer/unregisterProducer"
    protocol = WebSocketServerProtocol()
    protocol.transport = tcp_transport
    for name, args in (
        ("registerProducer", (object(), True)),
        ("unregisterProducer", ()),
    ):
        method = getattr(protocol, name, None)
        assert method is not None and takes(method, *args), broken(
            hook, PROTOCOL, f"{name}{args!r} no longer accepted"
        )
    first, ours = object(), object()
    protocol.registerProducer(first, True)
    with pytest.raises(RuntimeError):
        protocol.registerProducer(ours, True)
        pytest.fail(
            broken(
                "FileDescriptor.registerProducer",
                PROTOCOL,
                "a second producer no longer raises RuntimeError",
            )
        )
    protocol.unregisterProducer()
    protocol.registerProducer(ours, True)
    assert tcp_transport.producer is ours, broken(
        hook, PROTOCOL, "no longer passed to the transport"
    )


def test_send_data_carries_autobahns_own_frames():
    hook = "WebSocketProtocol.sendData(data, sync, chopsize)"
    send_data = getattr(WebSocketProtocol, "sendData", None)
    assert send_data is not None and takes(
        send_data, None, b"frame", sync=False, chopsize=None
    ), broken(hook, PROTOCOL, "gone, or no longer takes these arguments")
    for writer in ("sendFrame", "sendPreparedMessage"):
        assert "self.sendData(" in source(getattr(WebSocketProtocol, writer)), broken(
            hook, PROTOCOL, f"{writer} no longer writes through it"
        )


def test_broadcast_fast_path():
    hook = "prepareMessage / PreparedMessage.payloadHybi"
    prepared = WebSocketServerFactory().prepareMessage(b'{"a":1}')
    assert isinstance(prepared, PreparedMessage), broken(
        hook, f"{FACTORY} and {PROTOCOL} (_write_now)", "no PreparedMessage made"
    )
    assert getattr(prepared, "payloadHybi", None) == b'\x81\x07{"a":1}', broken(
        hook, PROTOCOL, "payloadHybi is no longer the whole unmasked text frame"
    )
    send_prepared = getattr(WebSocketProtocol, "sendPreparedMessage", None)
    assert send_prepared is not None and takes(send_prepared, None, prepared), broken(
        "WebSocketProtocol.sendPreparedMessage", PROTOCOL, "gone or changed"
    )
    assert "self._perMessageCompress = None" in source(
        WebSocketProtocol._connectionMade
    ), broken(
        "WebSocketProtocol._perMessageCompress",
        PROTOCOL,
        "no longer set (None) for every connection",
    )
    assert "self.send_queue" in source(WebSocketProtocol.sendData), broken(
        "WebSocketProtocol.send_queue",
        PROTOCOL,
        "sendData no longer queues only for sync or chopsize writes",
    )


def test_send_close_frame_takes_any_code():
    hook = "WebSocketProtocol.sendCloseFrame(code, reasonUtf8)"
    send_close_frame = getattr(WebSocketProtocol, "sendCloseFrame", None)
    assert send_close_frame is not None and takes(
        send_close_frame, None, code=1008, reasonUtf8=b"flooding"
    ), broken(hook, PROTOCOL, "gone, or no longer takes these arguments")


def test_on_frame_begin_is_called_for_every_frame():
    hook = "WebSocketProtocol.onFrameBegin()"
    on_frame_begin = getattr(WebSocketProtocol, "onFrameBegin", None)
    assert on_frame_begin is not None and takes(on_frame_begin, None), broken(
        hook, PROTOCOL, "gone or changed"
    )
    assert "self.onFrameBegin()" in source(WebSocketProtocol.processData), broken(
        hook, PROTOCOL, "the frame parser no longer calls it"
    )


def test_parser_keeps_unparsed_bytes_in_data():
    hook = "WebSocketProtocol.data (the parser's buffer)"
    assert "self.data += data" in source(WebSocketProtocol._dataReceived), broken(
        hook, f"{PROTOCOL} (_close_flooder)", "reads no longer go into it"
    )
    assert "self.data = self.data[" in source(WebSocketProtocol.processData), broken(
        hook, f"{PROTOCOL} (_close_flooder)", "the parser no longer eats it"
    )


def test_send_auto_ping():
    hook = "WebSocketProtocol._sendAutoPing()"
    send_auto_ping = getattr(WebSocketProtocol, "_sendAutoPing", None)
    assert send_auto_ping is not None and takes(send_auto_ping, None), broken(
        hook, PROTOCOL, "gone or changed"
    )
    assert "self._sendAutoPing," in source(WebSocketServerProtocol.succeedHandshake), (
        broken(hook, PROTOCOL, "pings are no longer scheduled through it")
    )


def test_on_auto_ping_timeout():
    hook = "WebSocketProtocol.onAutoPingTimeout()"
    on_timeout = getattr(WebSocketProtocol, "onAutoPingTimeout", None)
    assert on_timeout is not None and takes(on_timeout, None), broken(
        hook, PROTOCOL, "gone or changed"
    )
    scheduler = source(WebSocketProtocol._sendAutoPing)
    assert "self.onAutoPingTimeout" in scheduler, broken(
        hook, PROTOCOL, "no longer what a ping timeout calls"
    )
    for state in ("autoPingTimeoutCall", "autoPingPending", "autoPingPendingCall"):
        assert f"self.{state} =" in scheduler, broken(
            f"WebSocketProtocol.{state}", PROTOCOL, "no longer the ping state"
        )


def test_send_http_error_response():
    hook = "WebSocketServerProtocol.sendHttpErrorResponse()"
    method = getattr(WebSocketServerProtocol, "sendHttpErrorResponse", None)
    assert method is not None and takes(method, None, 404, "no such room"), broken(
        hook, PROTOCOL, "gone or changed"
    )
    assert "self.sendHttpErrorResponse(" in source(
        WebSocketServerProtocol.failHandshake
    ), broken(hook, PROTOCOL, "no longer how a refused handshake is answered")


def test_batched_timer():
    hook = "WebSocketServerFactory._batched_timer.call_later(delay, function)"
    timer = getattr(WebSocketServerFactory(), "_batched_timer", None)
    call_later = getattr(timer, "call_later", None)
    assert call_later is not None and takes(call_later, 5.0, lambda: None), broken(
        hook, PROTOCOL, "gone or changed"
    )


def test_chat_protocol_still_overrides_what_it_means_to():
    """A rename in Autobahn would leave chatbox's override dead, not failing."""
    for name in ("sendData", "onFrameBegin", "_sendAutoPing", "onAutoPingTimeout"):
        assert name in vars(ChatProtocol) and hasattr(WebSocketProtocol, name), broken(
            f"WebSocketProtocol.{name}", PROTOCOL, "the override hooks nothing"
        )


# -- chatbox/wire/backpressure.py --


def test_transport_write_buffer_attributes(tcp_transport):
    hook = "FileDescriptor.dataBuffer/offset/_tempDataLen"
    for name in ("dataBuffer", "offset", "_tempDataLen"):
        assert hasattr(tcp_transport, name), broken(hook, BACKPRESSURE, f"no {name}")
    tcp_transport.write(b"x" * 10)  # not flushed: MemoryReactor never writes
    assert PendingOutput(0, tcp_transport).queued() == 10, broken(
        hook, BACKPRESSURE, "they no longer add up to the bytes queued"
    )


# -- chatbox/service.py --


def test_exit_signal():
    hook = "reactor._exitSignal"
    assert hasattr(ReactorBase, "_exitSignal"), broken(hook, SERVICE, "gone")

    class Reactor:
        def callFromThread(self, *args: object) -> None:
            pass

        stop = None

    reactor = Reactor()
    ReactorBase.sigTerm(reactor, 15)  # type: ignore[arg-type]
    assert getattr(reactor, "_exitSignal", None) == 15, broken(
        hook, SERVICE, "SIGTERM no longer recorded in it"
    )
    assert "reactor._exitSignal" in source(app.ApplicationRunner.startReactor), broken(
        hook, SERVICE, "twistd no longer reads it after the reactor stops"
    )


def test_raise_synchronously():
    hook = "StreamServerEndpointService._raiseSynchronously"
    assert hasattr(StreamServerEndpointService, "_raiseSynchronously"), broken(
        hook, SERVICE, "gone"
    )
    assert "self._raiseSynchronously" in source(
        StreamServerEndpointService.privilegedStartService
    ), broken(hook, SERVICE, "privilegedStartService no longer reads it")


def test_waiting_for_port():
    hook = "StreamServerEndpointService._waitingForPort"
    listening: Deferred = Deferred()

    class Endpoint:
        def listen(self, factory: Factory) -> Deferred:
            return listening

    service = StreamServerEndpointService(Endpoint(), Factory())
    service.privilegedStartService()
    assert getattr(service, "_waitingForPort", None) is listening, broken(
        hook, f"{SERVICE} (ListenerService.privilegedStartService)", "gone"
    )
    assert issubclass(ListenerService, StreamServerEndpointService)


# -- chatbox/web/channel.py --

CHANNEL = "chatbox/web/channel.py"


class _Watched(http.HTTPChannel):
    """Plain twisted.web, recording what ChatChannel reads at each step."""

    seen: dict

    def allHeadersReceived(self) -> None:
        self.seen["length"] = self.length
        self.seen["request"] = self.requests[-1] if self.requests else None
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        super().allContentReceived()
        self.seen["handling"] = self._handlingRequest


def _channel() -> _Watched:
    channel = _Watched()
    channel.seen = {}
    channel.requestFactory = lambda *a, **k: http.Request(*a, **k)
    channel.makeConnection(StringTransport())
    return channel


def test_http_channel_marks_a_parsed_request_line_with_command():
    hook = "HTTPChannel._command"
    channel = _channel()
    assert not hasattr(channel, "_command"), broken(hook, CHANNEL, "set too early")
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    assert hasattr(channel, "_command"), broken(
        hook, CHANNEL, "no longer set once the request line is read (431 vs 414)"
    )


def test_http_channel_length_requests_and_handling_request():
    channel = _channel()
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    assert channel.seen["length"] == 5, broken(
        "HTTPChannel.length", CHANNEL, "no longer the announced body length"
    )
    assert isinstance(channel.seen["request"], http.Request), broken(
        "HTTPChannel.requests", CHANNEL, "no longer holds the request being read"
    )
    channel = _channel()
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert channel.seen["length"] == 0, broken(
        "HTTPChannel.length", CHANNEL, "not 0 for a request without a body"
    )
    assert channel.seen["handling"] is True, broken(
        "HTTPChannel._handlingRequest", CHANNEL, "not set while a request is served"
    )


@pytest.mark.parametrize(
    "method",
    [
        "allHeadersReceived",
        "allContentReceived",
        "requestDone",
        "rawDataReceived",
        "lineLengthExceeded",
        "timeoutConnection",
    ],
)
def test_http_channel_still_calls_what_chat_channel_overrides(method):
    assert callable(getattr(http.HTTPChannel, method, None)), broken(
        f"HTTPChannel.{method}", CHANNEL, "gone, so ChatChannel's override is dead"
    )
    # Called by twisted.web.http itself, its LineReceiver or TimeoutMixin.
    callers = "".join(inspect.getsource(m) for m in (http, basic, policies))
    assert f".{method}(" in callers, broken(
        f"HTTPChannel.{method}", CHANNEL, "no longer called by Twisted"
    )
