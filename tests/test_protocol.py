"""Every request, reply and event of docs/PROTOCOL.md, over real WebSockets."""

import re

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from tests.client import no_events_before

TIMESTAMP = re.compile(r"^\d{2}/\d{2}/\d{4}, \d{2}:\d{2}:\d{2}$")


# -- name: register --


@ensureDeferred
async def test_register_replies_and_tells_everyone_else(server):
    bo = await server.user("Bo")
    an = await server.client()
    reply = await an.register("An")
    assert reply == {
        "type": "name",
        "action": "register",
        "name": "An",
        "status": True,
        "timestamp": reply["timestamp"],
        "time": reply["time"],
    }
    assert TIMESTAMP.match(reply["timestamp"])
    assert await bo.event() == {
        "type": "receive",
        "datatype": "register",
        "name": "An",
        "timestamp": reply["timestamp"],
        "time": reply["time"],
    }
    await an.no_event_before(bo)  # not told of its own registration


@pytest.mark.parametrize("variant", ["An", "AN", "an", "Ａn", "ＡＮ"])
@ensureDeferred
async def test_register_refuses_a_name_held_under_nfkc_casefold(server, variant):
    await server.user("An")
    other = await server.client()
    assert await other.register(variant) == {
        "type": "name",
        "action": "register",
        "name": variant,
        "status": False,
        "reason": "NameAlreadyUsed",
    }


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 101,
        "   ",
        "\t",
        "An\x00",
        "A\u200dn",  # zero-width joiner (Cf)
        "An\u2028",  # line separator (Zl)
        "An\u2029",  # paragraph separator (Zp)
        "\u202eAn",  # right-to-left override (Cf)
        42,
        None,
        ["An"],
        {"name": "An"},
        True,
    ],
)
@ensureDeferred
async def test_register_refuses_a_malformed_name(server, name):
    client = await server.client()
    assert await client.register(name) == {
        "type": "name",
        "action": "register",
        "name": name,
        "status": False,
        "reason": "WrongFormatName",
    }
    # Still usable afterwards.
    assert (await client.register("Fine"))["status"] is True


@pytest.mark.parametrize("name", ["A", "x" * 100, "Nguyễn Văn An", "李", "😀", "a b"])
@ensureDeferred
async def test_register_accepts_names_as_typed(server, name):
    client = await server.client()
    reply = await client.register(name)
    assert reply["status"] is True and reply["name"] == name


@ensureDeferred
async def test_name_without_name_key(server):
    client = await server.client()
    assert await client.request({"type": "name"}) == {
        "type": "name",
        "status": False,
        "reason": "NotEnoughKey",
        "need": "name",
    }


# -- name: change --


@ensureDeferred
async def test_change_replies_and_tells_everyone_else(server):
    an = await server.user("An")
    bo = await server.user("Bo")
    await an.event()  # Bo joined
    reply = await an.register("Anh")
    assert reply == {
        "type": "name",
        "action": "change",
        "oldname": "An",
        "newname": "Anh",
        "status": True,
        "timestamp": reply["timestamp"],
        "time": reply["time"],
    }
    assert await bo.event() == {
        "type": "receive",
        "datatype": "change",
        "oldname": "An",
        "newname": "Anh",
        "timestamp": reply["timestamp"],
        "time": reply["time"],
    }
    await an.no_event_before(bo)  # not told of its own change


@ensureDeferred
async def test_change_frees_the_old_name_at_once(server):
    an = await server.user("An")
    await an.register("Anh")
    other = await server.client()
    assert (await other.register("an"))["status"] is True


@ensureDeferred
async def test_change_to_exactly_the_current_name_is_refused_as_v2(server):
    an = await server.user("An")
    assert await an.register("An") == {
        "type": "name",
        "action": "change",
        "oldname": "An",
        "newname": "An",
        "status": False,
        "reason": "NameAlreadyUsed",
    }


@ensureDeferred
async def test_change_to_a_variant_of_ones_own_name_succeeds(server):
    an = await server.user("an")
    reply = await an.register("An")
    assert reply["status"] is True
    assert (reply["oldname"], reply["newname"]) == ("an", "An")
    assert (await an.get())["data"]["online"] == ["An"]


@ensureDeferred
async def test_change_to_someone_elses_name_is_refused(server):
    an = await server.user("An")
    await server.user("Bo")
    reply = await an.register("BO")
    assert reply == {
        "type": "name",
        "action": "change",
        "oldname": "An",
        "newname": "BO",
        "status": False,
        "reason": "NameAlreadyUsed",
    }
    assert (await an.get())["name"] == "An"


@pytest.mark.parametrize("name", ["", "x" * 101, 7, "\u200b\u200b"])
@ensureDeferred
async def test_change_to_a_malformed_name_is_refused(server, name):
    an = await server.user("An")
    assert await an.register(name) == {
        "type": "name",
        "action": "change",
        "oldname": "An",
        "newname": name,
        "status": False,
        "reason": "WrongFormatName",
    }


# -- send --


@ensureDeferred
async def test_send_replies_with_id_and_tells_everyone_else(server):
    an = await server.user("An")
    bo = await server.user("Bo")
    await an.event()
    reply = await an.say("xin chào")
    assert reply == {
        "type": "send",
        "name": "An",
        "content": "xin chào",
        "status": True,
        "timestamp": reply["timestamp"],
        "time": reply["time"],
        "id": 1,
    }
    assert await bo.event() == {
        "type": "receive",
        "datatype": "message",
        "name": "An",
        "content": "xin chào",
        "timestamp": reply["timestamp"],
        "time": reply["time"],
        "id": 1,
    }
    assert (await an.say("again"))["id"] == 2
    await an.no_event_before(bo)  # not told of its own messages


@ensureDeferred
async def test_send_before_registering(server):
    client = await server.client()
    assert await client.say("hi") == {
        "type": "send",
        "status": False,
        "reason": "UnknownRegister",
    }


@ensureDeferred
async def test_send_without_content(server):
    an = await server.user("An")
    assert await an.request({"type": "send"}) == {
        "type": "send",
        "status": False,
        "reason": "NotEnoughKey",
        "need": "content",
    }


@pytest.mark.parametrize("content", ["", "x" * 4001, 5, None, ["hi"], {"a": 1}, False])
@ensureDeferred
async def test_send_refuses_malformed_content_with_v2s_username_key(server, content):
    an = await server.user("An")
    bo = await server.user("Bo")
    assert await an.say(content) == {
        "type": "send",
        "username": "An",
        "content": content,
        "status": False,
        "reason": "WrongFormatContent",
    }
    await an.event()  # Bo joined
    assert (await an.get())["data"]["message"] == []
    await bo.no_event_before(an)  # nothing was broadcast for it


@pytest.mark.parametrize(
    "content", ["x", "x" * 4000, "😀" * 4000, "a\nb\tc", "<b>hi</b>"]
)
@ensureDeferred
async def test_send_accepts_any_text_of_1_to_4000_characters(server, content):
    an = await server.user("An")
    assert (await an.say(content))["content"] == content


@ensureDeferred
async def test_send_is_acknowledged_only_once_on_disk(server):
    an = await server.user("An")
    reply = await an.say("durable")
    journal = server.data.with_name(server.data.name + ".journal")
    assert b'"content":"durable"' in journal.read_bytes()
    assert reply["status"] is True


# -- get --


@ensureDeferred
async def test_get_returns_history_oldest_first_and_who_is_online(server):
    an = await server.user("An")
    bo = await server.user("Bo")
    first = await an.say("one")
    second = await bo.say("two")
    reply = await an.get()
    assert reply == {
        "type": "get",
        "status": True,
        "name": "An",
        "timestamp": reply["timestamp"],
        "time": reply["time"],
        "data": {
            "message": [
                {
                    "id": 1,
                    "name": "An",
                    "content": "one",
                    "timestamp": first["timestamp"],
                    "time": first["time"],
                },
                {
                    "id": 2,
                    "name": "Bo",
                    "content": "two",
                    "timestamp": second["timestamp"],
                    "time": second["time"],
                },
            ],
            "online": ["An", "Bo"],
        },
    }


@ensureDeferred
async def test_online_keeps_registration_order_through_renames_and_leaves(server):
    an = await server.user("An")
    bo = await server.user("Bo")
    cu = await server.user("Cu")
    await bo.register("Bảo")
    an.abort()
    assert (await cu.event())["datatype"] == "change"  # Bo -> Bảo
    assert (await cu.event())["datatype"] == "leave"  # An
    dan = await server.user("Dan")
    assert (await dan.get())["data"]["online"] == ["Bảo", "Cu", "Dan"]


@ensureDeferred
async def test_get_before_registering(server):
    client = await server.client()
    assert await client.get() == {
        "type": "get",
        "status": False,
        "reason": "UnknownRegister",
    }


@ensureDeferred
async def test_get_sees_the_same_connections_earlier_sends(server):
    an = await server.user("An")
    for i in range(20):
        an.send_json({"type": "send", "content": f"m{i}"})
    an.send_json({"type": "get"})
    replies = [await an.reply() for _ in range(21)]
    assert replies[-1]["type"] == "get"
    assert [m["content"] for m in replies[-1]["data"]["message"]] == [
        f"m{i}" for i in range(20)
    ]


@ensureDeferred
async def test_get_paging_with_limit_before_and_after(server):
    an = await server.user("An")
    for i in range(1, 11):
        assert (await an.say(f"m{i}"))["id"] == i

    async def ids(**query):
        reply = await an.get(**query)
        assert reply["status"] is True, reply
        return [m["id"] for m in reply["data"]["message"]]

    assert await ids() == list(range(1, 11))
    assert await ids(limit=3) == [8, 9, 10]
    assert await ids(before=4) == [1, 2, 3]
    assert await ids(limit=2, before=4) == [2, 3]
    assert await ids(after=7) == [8, 9, 10]
    assert await ids(after=2, before=6) == [3, 4, 5]
    assert await ids(after=2, before=6, limit=1) == [5]
    assert await ids(after=10) == []
    assert await ids(before=1) == []
    assert await ids(limit=1000) == list(range(1, 11))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("limit", 0),
        ("limit", -1),
        ("limit", "5"),
        ("limit", 2.5),
        ("limit", True),
        ("before", -1),
        ("before", "x"),
        ("after", [1]),
        ("after", False),
    ],
)
@ensureDeferred
async def test_get_refuses_bad_paging_arguments(server, field, value):
    an = await server.user("An")
    assert await an.get(**{field: value}) == {
        "type": "get",
        "status": False,
        "reason": "WrongFormatArgument",
        "field": field,
    }


@ensureDeferred
async def test_bare_get_is_capped_to_the_newest(data_file):
    from tests.server import start_server

    server = await start_server(data_file, "--history-cap=3")
    try:
        an = await server.user("An")
        for i in range(5):
            await an.say(f"m{i}")
        reply = await an.get()
        assert [m["content"] for m in reply["data"]["message"]] == ["m2", "m3", "m4"]
        reply = await an.get(limit=100)
        assert len(reply["data"]["message"]) == 3
    finally:
        await server.stop()


# -- leave --


@ensureDeferred
async def test_leave_is_broadcast_at_once_on_a_clean_close(server):
    an = await server.user("An")
    bo = await server.user("Bo")
    await an.event()
    an.sendClose(1000)
    event = await bo.event(timeout=2)
    assert event == {
        "type": "receive",
        "datatype": "leave",
        "name": "An",
        "timestamp": event["timestamp"],
        "time": event["time"],
    }
    assert (await bo.get())["data"]["online"] == ["Bo"]


@ensureDeferred
async def test_leave_is_broadcast_at_once_when_a_client_vanishes(server):
    an = await server.user("An")
    bo = await server.user("Bo")
    await an.event()
    an.abort()
    assert (await bo.event(timeout=2))["datatype"] == "leave"
    other = await server.client()
    assert (await other.register("AN"))["status"] is True


@ensureDeferred
async def test_unregistered_connections_leave_silently(server, monkeypatch):
    marker = await server.user("Marker")
    bo = await server.user("Bo")
    before = set(server.factory.connections)
    lurker = await server.client()
    [theirs] = server.factory.connections - before  # its server side
    dropped: Deferred = Deferred()
    connection_lost = server.factory.connection_lost

    def watch(connection):
        connection_lost(connection)
        if connection is theirs:
            dropped.callback(None)

    monkeypatch.setattr(server.factory, "connection_lost", watch)
    lurker.abort()
    await dropped.addTimeout(10, reactor)  # the server has let it go...
    await bo.no_event_before(marker)  # ...and told nobody


@ensureDeferred
async def test_a_peer_that_stops_answering_pings_is_dropped_and_its_name_freed(
    data_file,
):
    from tests.server import start_server

    # Autobahn batches its timers in 0.2 s buckets; 1 s leaves room for that.
    server = await start_server(
        data_file, "--ws-ping-interval=1", "--ws-ping-timeout=1"
    )
    try:
        bo = await server.user("Bo")
        ghost = await server.client(answer_pings=False)
        await ghost.register("Ghost")
        assert (await bo.event())["datatype"] == "register"
        started = reactor.seconds()
        event = await bo.event(timeout=5)
        assert (event["datatype"], event["name"]) == ("leave", "Ghost")
        assert reactor.seconds() - started < 3.5  # interval + timeout + slack
        assert (await bo.get())["data"]["online"] == ["Bo"]
    finally:
        await server.stop()


# -- keepalive --


@ensureDeferred
async def test_v2_json_ping_carries_whole_seconds_as_an_integer(data_file):
    from tests.server import start_server

    server = await start_server(data_file, "--json-ping=1")
    try:
        an = await server.user("An")
        ping = await an.ping(timeout=3)
        assert ping == {"type": "ping", "timeout": 1}
        assert type(ping["timeout"]) is int  # v2 sends 5, never 5.0
    finally:
        await server.stop()


@ensureDeferred
async def test_v2_json_ping_goes_to_every_connection(data_file):
    from tests.server import start_server

    server = await start_server(data_file, "--json-ping=0.2")
    try:
        lurker = await server.client()
        an = await server.user("An")
        assert await lurker.ping(timeout=2) == {"type": "ping", "timeout": 0.2}
        assert await an.ping(timeout=2) == {"type": "ping", "timeout": 0.2}
    finally:
        await server.stop()


# -- ordering and races --


@ensureDeferred
async def test_every_receiver_sees_every_message_once_in_id_order(server):
    senders = [await server.user(f"s{i}") for i in range(4)]
    watchers = [await server.user(f"w{i}") for i in range(3)]
    for round_ in range(25):
        for i, sender in enumerate(senders):
            sender.send_json({"type": "send", "content": f"s{i}-{round_}"})
    for sender in senders:
        for _ in range(25):
            assert (await sender.reply())["status"] is True
    seen = []
    for watcher in watchers:
        ids = []
        while len(ids) < 100:
            event = await watcher.event()
            if event["datatype"] == "message":
                ids.append(event["id"])
        assert ids == sorted(ids) and len(set(ids)) == 100
        seen.append(ids)
    await no_events_before(watchers, senders[0])  # and nothing more
    assert seen[0] == seen[1] == seen[2] == list(range(1, 101))


@ensureDeferred
async def test_a_request_over_the_waiting_limit_behind_a_name_is_rate_limited(
    server, monkeypatch
):
    """ "Requests sent after a `name` are handled, in order, once its reply
    is out ... At most 256 requests (and 1 MiB of them) wait so; each one
    beyond is answered at once with `RateLimited` (`retry_after` 1)." One
    process decides a `name` at once, so the room here decides it only when
    the test says, as a cluster's round trip would."""
    room = server.factory.room
    claim = room.claim
    decide: Deferred = Deferred()

    def claim_when_decided(owner, name, timestamp):
        return decide.addCallback(lambda _: claim(owner, name, timestamp))

    monkeypatch.setattr(room, "claim", claim_when_decided)
    an = await server.client()
    an.send_json({"type": "name", "name": "An"})
    for i in range(256):
        an.send_json({"type": "send", "content": f"m{i}"})
    an.send_json({"type": "send", "content": "one too many"})
    assert await an.reply() == {
        "type": "send",
        "status": False,
        "reason": "RateLimited",
        "retry_after": 1,
    }
    decide.callback(None)
    assert (await an.reply())["action"] == "register"
    sent = [await an.reply() for _ in range(256)]
    assert [r["content"] for r in sent] == [f"m{i}" for i in range(256)]
    history = (await an.get(limit=1000))["data"]["message"]
    assert [m["content"] for m in history] == [f"m{i}" for i in range(256)]


@ensureDeferred
async def test_many_clients_racing_for_one_name_exactly_one_wins(server):
    clients = [await server.client() for _ in range(20)]
    for i, client in enumerate(clients):
        client.send_json({"type": "name", "name": "Tie" if i % 2 else "TIE"})
    replies = [await client.reply() for client in clients]
    winners = [r for r in replies if r["status"]]
    assert len(winners) == 1
    assert {r["reason"] for r in replies if not r["status"]} == {"NameAlreadyUsed"}


@ensureDeferred
async def test_swapping_names_through_renames_never_lets_two_hold_one(server):
    an = await server.user("An")
    bo = await server.user("Bo")
    assert (await an.register("Bo"))["reason"] == "NameAlreadyUsed"
    assert (await bo.register("Temp"))["status"] is True
    assert (await an.register("bo"))["status"] is True
    assert (await bo.register("An"))["status"] is True
    assert (await an.get())["data"]["online"] == ["bo", "An"]


@ensureDeferred
async def test_sends_during_shutdown_are_refused_not_silently_dropped(server):
    an = await server.user("An")
    server.factory.closing = True  # what ChatService.stopService sets first
    assert await an.say("too late") == {
        "type": "send",
        "username": "An",
        "content": "too late",
        "status": False,
        "reason": "ErrorWhenSend",
        "error": "server shutting down",
    }


@ensureDeferred
async def test_a_fault_is_answered_in_the_shape_of_its_request(
    server, monkeypatch, no_logged_failures
):
    """A request the server fails to carry out (a bug, not a refusal) gets
    its own type's `ErrorWhen...` reply with `internal error`, and the
    fault is logged."""

    def bug(*args):
        raise RuntimeError("bug")

    room = server.factory.room
    an = await server.user("An")
    newcomer = await server.client()
    monkeypatch.setattr(room, "claim", bug)
    assert await newcomer.register("Bo") == {
        "type": "name",
        "action": "register",
        "name": "Bo",
        "status": False,
        "reason": "ErrorWhenRegister",
        "error": "internal error",
    }
    monkeypatch.setattr(room, "rename", bug)
    assert await an.register("Anh") == {
        "type": "name",
        "action": "change",
        "oldname": "An",
        "newname": "Anh",
        "status": False,
        "reason": "ErrorWhenChange",
        "error": "internal error",
    }
    monkeypatch.setattr(room, "page", bug)
    assert await an.get() == {
        "type": "get",
        "name": "An",
        "status": False,
        "reason": "ErrorWhenGet",
        "error": "internal error",
    }
    monkeypatch.setattr(room, "post", bug)
    assert await an.say("hi") == {
        "type": "send",
        "username": "An",
        "content": "hi",
        "status": False,
        "reason": "ErrorWhenSend",
        "error": "internal error",
    }
    # The failed send is not left in flight: a later get is answered.
    monkeypatch.undo()
    reply = await an.get()
    assert reply["status"] is True, reply
    assert len(no_logged_failures) == 4
    no_logged_failures.clear()
