"""Where a handshake's token is found (chatbox.wire.protocol's
handshake_tokens, which chatbox.web's 401 and the connection both ask),
and the chat port's handshake refusals that keep tokens out of the log."""

from urllib.parse import parse_qs

import pytest
from twisted.web.test.requesthelper import DummyRequest

from chatbox.web.handshake import handshake_refusal
from chatbox.wire.protocol import NEEDS_TOKEN, handshake_tokens


@pytest.mark.parametrize(
    "query, authorization, expected",
    [
        ("", None, []),
        ("token=abc", None, ["abc"]),
        ("token=", None, []),  # empty: no token, as Autobahn's parse_qs drops it
        ("x=1&token=abc&y=2", None, ["abc"]),
        ("token=a&token=b", None, ["a", "b"]),
        ("tokenx=abc", None, []),
        ("", "Bearer abc", ["abc"]),
        ("", "bearer   abc  ", ["abc"]),
        ("", "BEARER abc", ["abc"]),
        ("", "Bearer", []),
        ("", "Bearer ", []),
        ("", "Basic YTpi", []),
        ("", "", []),
        ("token=a", "Bearer b", ["a", "b"]),
        ("token=a%2Eb", None, ["a.b"]),
    ],
)
def test_handshake_tokens(query, authorization, expected):
    assert handshake_tokens(parse_qs(query), authorization) == expected


def test_the_401_text_is_in_both_languages():
    english, vietnamese = NEEDS_TOKEN.split("\n")
    assert english == "this chat needs a sign-in token: open the link you were given"
    assert "mã đăng nhập" in vietnamese


def _handshake(uri: bytes) -> DummyRequest:
    request = DummyRequest([b""])
    request.uri = uri
    request.method = b"GET"
    request.clientproto = b"HTTP/1.1"
    for name, value in (
        (b"host", b"127.0.0.1"),
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    ):
        request.requestHeaders.setRawHeaders(name, [value])
    return request


@pytest.mark.parametrize("uri", [b"/#?token=abc", b"/?token=abc#x", b"/room#"])
def test_a_fragment_is_refused_before_autobahn_logs_it(uri):
    assert handshake_refusal(_handshake(uri), (), {13}) == (
        400,
        "a WebSocket URL has no fragment (#)",
        [],
    )


def test_a_token_in_the_query_is_a_good_handshake():
    assert handshake_refusal(_handshake(b"/?token=a.b.c"), (), {13}) is None
