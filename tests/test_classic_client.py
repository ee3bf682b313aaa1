"""The classic v2 browser client's session, as a browser puts it on the wire.

The classic client connects to ws://HOST:PORT with no path, sends an Origin
header, offers permessage-deflate, and then goes: name, get, send, rename,
get, close. Its JavaScript reads exactly the fields asserted here.
"""

from pytest_twisted import ensureDeferred

from tests.client import classic_browser as browser


@ensureDeferred
async def test_a_classic_session(server):
    an = await browser(server.port)
    bo = await browser(server.port)

    reply = await an.register("An")
    assert (reply["type"], reply["action"], reply["status"]) == (
        "name",
        "register",
        True,
    )
    await bo.register("Bo")
    joined = await an.event()
    assert (joined["datatype"], joined["name"]) == ("register", "Bo")

    update = await an.get()
    assert update["data"]["online"] == ["An", "Bo"] and update["data"]["message"] == []

    sent = await an.say("Chào cả lớp!")
    assert (sent["type"], sent["status"], sent["name"], sent["content"]) == (
        "send",
        True,
        "An",
        "Chào cả lớp!",
    )
    message = await bo.event()
    assert (
        message["datatype"],
        message["name"],
        message["content"],
        message["timestamp"],
    ) == ("message", "An", "Chào cả lớp!", sent["timestamp"])

    renamed = await bo.register("Bảo")
    assert (renamed["action"], renamed["oldname"], renamed["newname"]) == (
        "change",
        "Bo",
        "Bảo",
    )
    change = await an.event()
    assert (change["datatype"], change["oldname"], change["newname"]) == (
        "change",
        "Bo",
        "Bảo",
    )

    update = await bo.get()
    assert update["name"] == "Bảo"
    assert update["data"]["online"] == ["An", "Bảo"]
    assert [(m["name"], m["content"]) for m in update["data"]["message"]] == [
        ("An", "Chào cả lớp!")
    ]

    bo.sendClose(1000)
    left = await an.event()
    assert (left["datatype"], left["name"]) == ("leave", "Bảo")
    # The browser never got a frame it could not parse, nor a compressed one.
    assert all(isinstance(m, dict) for m in an.raw + bo.raw)
    assert an._perMessageCompress is None


V2_EVENT_FIELDS = {
    "register": {"type", "datatype", "name", "timestamp"},
    "change": {"type", "datatype", "oldname", "newname", "timestamp"},
    "message": {"type", "datatype", "name", "content", "timestamp"},
    "leave": {"type", "datatype", "name", "timestamp"},
}


@ensureDeferred
async def test_a_classic_session_beside_the_bundled_clients_extensions(server):
    """The bundled client sends typing hints and send_ids; a classic client
    in the same chat gets only what v2 had, plus fields and one event type
    it ignores: every v2 field is there with its v2 type, and its own
    requests (which carry no send_id) are answered as v2 answered them."""
    classic = await browser(server.port)
    modern = await browser(server.port)
    await classic.register("An")
    await modern.register("Bo")
    modern.send_json({"type": "typing"})
    sent = await modern.request({"type": "send", "content": "hi", "send_id": "m-1"})
    again = await modern.request({"type": "send", "content": "hi", "send_id": "m-1"})
    assert again == sent
    own = await classic.say("chào")
    assert "send_id" not in own
    assert isinstance(own["timestamp"], str) and isinstance(own["name"], str)
    modern.sendClose(1000)

    seen = [await classic.event() for _ in range(4)]
    assert [e["datatype"] for e in seen] == ["register", "typing", "message", "leave"]
    for event in seen:
        if event["datatype"] in V2_EVENT_FIELDS:
            v2_fields = V2_EVENT_FIELDS[event["datatype"]]
            assert v2_fields <= set(event), event
            assert all(isinstance(event[f], str) for f in v2_fields), event
    # The retry stored nothing: one "hi", once.
    history = (await classic.get())["data"]["message"]
    assert [(m["name"], m["content"]) for m in history] == [
        ("Bo", "hi"),
        ("An", "chào"),
    ]
