"""The ext additions of issue 12, over real sockets: `time` beside every v2
`timestamp`, idempotent sends (`send_id`), typing hints and the online count
before joining. Each is something a v2 client never sends or ignores."""

import json

import pytest
from pytest_twisted import ensureDeferred

from chatbox.chat.sends import WINDOW
from chatbox.wire.clock import millis_of
from tests.client import connect, no_events_before
from tests.test_store import HeldFsync


def same_instant(message: dict) -> None:
    """`time` is the instant the v2 `timestamp` names, to the millisecond
    within its second (the server's zone is this process's)."""
    assert type(message["time"]) is int, message
    assert millis_of(message["timestamp"]) == message["time"] // 1000 * 1000, message


@ensureDeferred
async def test_every_timestamp_has_its_time(server):
    an = await server.client()
    registered = await an.register("An")
    bo = await server.user("Bo")
    joined = await an.event()
    sent = await bo.say("xin chào")
    posted = await an.event()
    renamed_reply = await bo.register("Bảo")
    renamed = await an.event()
    got = await an.get()
    bo.sendClose()
    left = await an.event()
    for message in (registered, joined, sent, posted, renamed_reply, renamed, left):
        same_instant(message)
    same_instant(got)
    [entry] = got["data"]["message"]
    same_instant(entry)
    assert entry["time"] == sent["time"] == posted["time"]


@ensureDeferred
async def test_history_written_before_time_gets_it_on_load(tmp_path):
    from tests.server import start_server

    data = tmp_path / "data.json"
    data.write_text(
        json.dumps(
            [
                {"name": "An", "content": "v2", "timestamp": "01/01/2020, 10:00:00"},
                {"name": "Bo", "content": "odd", "timestamp": "not a time"},
                # By hand: a `time` no 4-digit year can have is read anew.
                {
                    "name": "Cy",
                    "content": "hand",
                    "timestamp": "01/01/2020, 10:00:00",
                    "time": -5,
                },
                {
                    "name": "Dung",
                    "content": "moved",
                    "timestamp": "01/01/2020, 10:00:00",
                    "time": 1577844000000,
                },
            ]
        )
    )
    server = await start_server(data)
    try:
        an = await server.user("Reader")
        old, odd, hand, moved = (await an.get())["data"]["message"]
        same_instant(old)
        assert hand["time"] == old["time"]
        # A `time` from a server in another zone is what it meant: kept.
        assert moved["time"] == 1577844000000
        # A timestamp nobody can read keeps its text and gets no `time`.
        assert odd["timestamp"] == "not a time" and "time" not in odd
    finally:
        await server.stop()


@ensureDeferred
async def test_a_repeated_send_id_gets_the_original_and_stores_nothing(server):
    an = await server.user("An")
    bo = await server.user("Bo")
    await an.event()  # Bo joined
    first = await an.request({"type": "send", "content": "once", "send_id": "s-1"})
    assert first["status"] is True and first["send_id"] == "s-1"
    await bo.event()

    # The reply was lost with the connection; the client comes back and
    # retries, even with the text edited meanwhile.
    an.abort()
    await bo.event()  # An left
    again = await server.user("An")
    await bo.event()  # An joined
    repeat = await again.request(
        {"type": "send", "content": "once, edited", "send_id": "s-1"}
    )
    assert repeat == first
    # Nothing was told: the next event Bo gets is a later marker.
    await no_events_before([bo], again, "marker")
    contents = [m["content"] for m in (await bo.get())["data"]["message"]]
    assert contents == ["once", "marker"]

    # Another nickname's send_id is its own; so is another id.
    other = await bo.request({"type": "send", "content": "mine", "send_id": "s-1"})
    fresh = await again.request({"type": "send", "content": "new", "send_id": "s-2"})
    assert other["id"] != first["id"] and fresh["id"] not in (first["id"], other["id"])


async def retried_while_held(server, held: HeldFsync, content: str):
    """An sends `content` with a send_id; the journal holds its write at the
    fsync while An's connection dies and An, back, sends it again. Returns
    An's new connection and a watcher, both registered."""
    # Private hook: the running store's journal, held at its fsync.
    server.factory.room.store._journal._fsync = held.fsync
    an = await server.user("An")
    watcher = await server.user("Watcher")
    an.send_json({"type": "send", "content": content, "send_id": "s-9"})
    await held.entered
    an.abort()
    await watcher.event()  # An left
    again = await server.user("An")
    again.send_json({"type": "send", "content": content, "send_id": "s-9"})
    return again, watcher


@ensureDeferred
async def test_a_repeat_while_the_original_is_being_stored_waits_for_it(server):
    held = HeldFsync()
    again, watcher = await retried_while_held(server, held, "slow disk")
    held.release()
    repeat = await again.reply()
    assert (repeat["status"], repeat["id"], repeat["content"]) == (True, 1, "slow disk")
    await watcher.event()  # An joined
    posted = await watcher.event()
    assert (posted["datatype"], posted["id"]) == ("message", 1)
    await no_events_before([watcher], again, "after")
    assert [m["id"] for m in (await watcher.get())["data"]["message"]] == [1, 2]


@ensureDeferred
async def test_a_send_id_is_forgotten_after_its_window(server):
    clock_offset = [0.0]
    factory = server.factory
    # Private hook: the local room's window reads time through this.
    real = factory.room.sends._seconds
    factory.room.sends._seconds = lambda: real() + clock_offset[0]
    an = await server.user("An")
    first = await an.request({"type": "send", "content": "a", "send_id": "s"})
    clock_offset[0] = WINDOW + 1
    later = await an.request({"type": "send", "content": "a", "send_id": "s"})
    assert later["id"] == first["id"] + 1


@pytest.mark.parametrize("send_id", ["", "x" * 65, "has space", "ü", 7, "a\nb", ["s"]])
@ensureDeferred
async def test_a_bad_send_id_is_refused_and_nothing_is_stored(server, send_id):
    an = await server.user("An")
    reply = await an.request({"type": "send", "content": "x", "send_id": send_id})
    assert reply == {
        "type": "send",
        "status": False,
        "reason": "WrongFormatArgument",
        "field": "send_id",
    }
    assert (await an.get())["data"]["message"] == []


@ensureDeferred
async def test_typing_reaches_the_others_at_most_once_per_interval(server):
    an = await server.user("An")
    bo = await server.user("Bo")
    cy = await server.user("Cy")
    for watcher in (an, an, bo):
        await watcher.event()  # the joins
    for _ in range(50):  # a client hammering it: one event, no replies
        an.send_json({"type": "typing"})
    assert (await an.say("done"))["status"] is True
    for watcher in (bo, cy):
        typing = await watcher.event()
        assert typing == {"type": "receive", "datatype": "typing", "name": "An"}
        assert (await watcher.event())["content"] == "done"
    assert an.replies.pending == [] and an.events.pending == []
    # Never stored.
    assert [m["content"] for m in (await bo.get())["data"]["message"]] == ["done"]


@ensureDeferred
async def test_typing_before_joining_is_refused(server):
    stranger = await server.client()
    reply = await stranger.request({"type": "typing"})
    assert reply == {"type": "typing", "status": False, "reason": "UnknownRegister"}


@ensureDeferred
async def test_the_online_count_is_there_before_joining(server):
    for name in ("An", "Bo", "Cy"):
        await server.user(name)
    stranger = await server.client()
    assert await stranger.request({"type": "online"}) == {
        "type": "online",
        "status": True,
        "count": 3,
    }
    watcher = await connect(server.url)
    await stranger.register("Dung")
    assert (await watcher.request({"type": "online"}))["count"] == 4


@ensureDeferred
async def test_one_address_gets_half_as_many_typing_hints_as_messages(tmp_path):
    """Each connection's own 2 s interval is no limit for an address with
    many connections: its hints get half its --ip-send-rate and burst."""
    from tests.server import start_server

    server = await start_server(
        tmp_path / "data.json", "--ip-send-rate=0.01", "--ip-send-burst=6"
    )
    try:
        watcher = await server.user("Watcher")
        typists = [await server.user(f"T{i}") for i in range(10)]
        for _ in typists:
            await watcher.event()  # their joins
        for typist in typists:
            typist.send_json({"type": "typing"})
            await typist.get(limit=1)  # handled, in order, after its typing
        marker = await server.user("Marker")
        assert (await marker.say("that was all"))["status"] is True
        heard = []
        while (event := await watcher.event())["datatype"] != "message":
            heard.append((event["datatype"], event["name"]))
        typing = [("typing", f"T{i}") for i in range(3)]
        assert heard == [*typing, ("register", "Marker")]
    finally:
        await server.stop()


@ensureDeferred
async def test_typing_on_every_keystroke_is_never_refused_nor_closed(tmp_path):
    """A client of someone else's making may send a hint per keystroke:
    hints past the limits are dropped, never answered RateLimited (which
    leads to a 1008 close for flooding)."""
    from tests.server import start_server

    server = await start_server(tmp_path / "data.json", "--rate=1", "--burst=5")
    try:
        an = await server.user("An")
        # Twelve times the request burst (within the frame budget, 20 times).
        for _ in range(60):
            an.send_json({"type": "typing"})
        reply = await an.get(limit=1)
        assert reply["status"] is True, reply
        assert an.replies.pending == [] and not an.closed.called
    finally:
        await server.stop()


class FailOnce(HeldFsync):
    """Held at its first fsync, which then fails as a full disk does."""

    def fsync(self, fd: int) -> None:
        if not self._open.is_set():
            super().fsync(fd)  # waits for release()
            raise OSError(28, "No space left on device")
        super().fsync(fd)


@ensureDeferred
async def test_a_repeat_waiting_for_an_original_that_failed_is_a_new_try(server):
    held = FailOnce()
    again, watcher = await retried_while_held(server, held, "full disk")
    # Answered at once, after the send before it was handled: it waits now.
    assert (await again.request({"type": "online"}))["count"] == 2
    held.release()
    repeat = await again.reply()
    assert (repeat["status"], repeat["id"], repeat["content"]) == (True, 1, "full disk")
    assert [m["id"] for m in (await watcher.get())["data"]["message"]] == [1]


@ensureDeferred
async def test_send_ids_outlive_a_clean_restart(tmp_path):
    """A deploy: the phone's socket died silently before the reply came, the
    server was restarted (SIGTERM, as systemd does), the phone retries."""
    import signal

    from tests.process import start

    first = await start(tmp_path)
    try:
        an = await connect(first.url)
        await an.register("An")
        sent = await an.request({"type": "send", "content": "once", "send_id": "d-1"})
    finally:
        await first.kill(signal.SIGTERM)
    assert first.stopped_cleanly, first.output.decode()
    assert (tmp_path / "data.json.sends").exists()

    second = await start(tmp_path)
    try:
        again = await connect(second.url)
        await again.register("An")
        retry = await again.request(
            {"type": "send", "content": "once", "send_id": "d-1"}
        )
        assert retry == sent
        history = (await again.get())["data"]["message"]
        assert [m["content"] for m in history] == ["once"]
    finally:
        await second.kill(signal.SIGTERM)


@ensureDeferred
async def test_a_damaged_send_id_file_is_ignored_with_a_warning(tmp_path):
    import signal

    from tests.process import start

    (tmp_path / "data.json.sends").write_text("[not json")
    server = await start(tmp_path)
    try:
        an = await connect(server.url)
        await an.register("An")
        assert (await an.say("fine"))["status"] is True
    finally:
        await server.kill(signal.SIGTERM)
    assert b"ignored the send_ids of the last run" in server.output
    assert server.stopped_cleanly
    # The clean stop wrote a good one in its place.
    assert json.loads((tmp_path / "data.json.sends").read_text()) == []


@ensureDeferred
async def test_a_new_connection_gets_a_keepalive_at_once(tmp_path):
    """How a browser learns how long a silence means the server froze, so a
    page that joined a second before the server stopped still notices."""
    from tests.server import start_server

    server = await start_server(tmp_path / "data.json", "--json-ping=30")
    try:
        client = await server.client()
        # Long before the first of every 30 s, and before any reply.
        assert await client.ping(timeout=5) == {"type": "ping", "timeout": 30}
        assert client.raw[0] == {"type": "ping", "timeout": 30}
    finally:
        await server.stop()
