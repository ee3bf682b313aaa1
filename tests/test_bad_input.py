"""PROTOCOL.md *Bad input*: v2 crashed or dropped on these; chatbox answers.

Each case checks the offender's reply, that its own connection still works
(or is closed with the RFC code), and that everyone else carries on.
"""

import pytest
from pytest_twisted import ensureDeferred

WRONG_JSON = {"status": False, "reason": "WrongFormatJSON"}
UNKNOWN_TYPE = {"type": None, "status": False, "reason": "UnknownType"}


async def still_works(server, client, bystander):
    """The client's connection and the bystander are unharmed."""
    reply = await client.get()
    assert reply["status"] is True, reply
    assert (await bystander.say("still here"))["status"] is True


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"not json", WRONG_JSON),
        (b"{", WRONG_JSON),
        (b"", WRONG_JSON),
        (b'{"type":"send","content":NaN}', WRONG_JSON),
        (b'{"type":"send","content":1e999}', WRONG_JSON),
        (b'{"type":"name","name":"\\ud800"}', WRONG_JSON),  # lone surrogate
        (b"[" * 5000 + b"]" * 5000, WRONG_JSON),  # nesting deeper than 1024
        (b"[]", WRONG_JSON),
        (b'["type","get"]', WRONG_JSON),
        (b'"get"', WRONG_JSON),
        (b"42", WRONG_JSON),
        (b"null", WRONG_JSON),
        (b"true", WRONG_JSON),
        (b"{}", UNKNOWN_TYPE),
        (b'{"type":null}', UNKNOWN_TYPE),
        (b'{"type":5}', UNKNOWN_TYPE),
        (b'{"type":["get"]}', UNKNOWN_TYPE),
        (b'{"type":{"a":1}}', UNKNOWN_TYPE),
        (b'{"type":"register","name":"x"}', UNKNOWN_TYPE),  # v1's type
        (b'{"type":"GET"}', UNKNOWN_TYPE),
        (b'{"type":"__init__"}', UNKNOWN_TYPE),
    ],
)
@ensureDeferred
async def test_malformed_requests_get_a_reason_and_the_connection_stays(
    server, payload, expected
):
    client = await server.user("An")
    bystander = await server.user("Bo")
    client.sendMessage(payload)
    assert await client.reply() == expected
    await still_works(server, client, bystander)


@ensureDeferred
async def test_huge_integers_are_answered_safely(server):
    an = await server.user("An")
    # Beyond 64 bits an integer is read as a float and can be echoed back...
    an.sendMessage(b'{"type":"send","content":' + b"9" * 30 + b"}")
    reply = await an.reply()
    assert reply["reason"] == "WrongFormatContent"
    assert isinstance(reply["content"], float)
    # ...and beyond a double's range it is not a number JSON peers can share.
    an.sendMessage(b'{"type":"send","content":' + b"9" * 400 + b"}")
    assert await an.reply() == WRONG_JSON


@ensureDeferred
async def test_duplicate_keys_take_the_last_value(server):
    an = await server.user("An")
    an.sendMessage(b'{"type":"send","content":"first","content":"second"}')
    assert (await an.reply())["content"] == "second"


@ensureDeferred
async def test_binary_frame_is_refused_with_1003(server):
    bystander = await server.user("Bo")
    client = await server.user("An")
    client.sendMessage(b'{"type":"get"}', isBinary=True)
    code, _ = await client.wait_closed()
    assert code == 1003
    assert (await bystander.event())["datatype"] == "register"
    assert (await bystander.event())["datatype"] == "leave"
    assert (await bystander.say("fine"))["status"] is True


@ensureDeferred
async def test_oversize_message_is_refused_with_1009(server):
    bystander = await server.user("Bo")
    client = await server.user("An")
    client.send_json({"type": "send", "content": "x" * 70_000})
    code, _ = await client.wait_closed()
    assert code == 1009
    assert (await bystander.say("fine"))["status"] is True
    assert [m["content"] for m in (await bystander.get())["data"]["message"]] == [
        "fine"
    ]


@ensureDeferred
async def test_a_4000_character_message_in_any_script_fits_the_frame_limit(server):
    an = await server.user("An")
    for char in ("x", "ệ", "李", "😀"):
        assert (await an.say(char * 4000))["status"] is True


@ensureDeferred
async def test_invalid_utf8_is_refused_with_1007(server):
    bystander = await server.user("Bo")
    client = await server.user("An")
    client.sendMessage(b'{"type":"send","content":"\xff\xfe"}')
    code, _ = await client.wait_closed()
    assert code == 1007
    assert (await bystander.say("fine"))["status"] is True


@ensureDeferred
async def test_plain_tcp_garbage_does_not_disturb_anyone(server):
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    class Garbage(Protocol):
        def __init__(self) -> None:
            self.lost: Deferred = Deferred()

        def connectionLost(self, reason: object = None) -> None:
            self.lost.callback(None)

    bystander = await server.user("Bo")
    garbage = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), Garbage()
    )
    garbage.transport.write(b"\x00\xff" * 1000 + b"\r\n\r\n")
    # The server has read the garbage once it hangs up on it; only then is
    # the bystander's reply evidence that it was not disturbed.
    await garbage.lost.addTimeout(10, reactor)
    assert (await bystander.say("fine"))["status"] is True
