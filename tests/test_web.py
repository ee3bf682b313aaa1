"""The HTTP side of the chat port: the page, /healthz and /metrics."""

import errno
import json

import pytest
from pytest_twisted import ensureDeferred

from chatbox.local import datafile
from tests.http import fetch, metric


@ensureDeferred
async def test_the_page_and_its_files_are_served_on_the_chat_port(server):
    code, headers, body = await fetch(server, "/")
    assert code == 200 and headers["content-type"].startswith("text/html")
    assert b'<script src="/static/app.js">' in body
    for path, kind in (
        ("/static/app.js", "javascript"),
        ("/static/style.css", "text/css"),
    ):
        code, headers, _ = await fetch(server, path)
        assert code == 200 and kind in headers["content-type"], path
    code, _, _ = await fetch(server, "/nothing-here")
    assert code == 404


@ensureDeferred
async def test_healthz_reports_and_turns_503_when_persistence_fails(server):
    an = await server.user("An")
    await an.say("hello")
    code, headers, body = await fetch(server, "/healthz")
    assert code == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "status": "up",
        "connections": 1,
        "registered": 1,
        "history": 1,
        "persistence": "ok",
        "rooms": {"open": 1, "loaded": 1, "failing": 0},
    }

    def disk_full(journal, data):
        raise OSError(errno.ENOSPC, "No space left on device", journal.path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datafile.Journal, "append", disk_full)
        assert (await an.say("lost"))["reason"] == "ErrorWhenSend"
        code, _, body = await fetch(server, "/healthz")
        assert code == 503
        assert json.loads(body)["persistence"] == "failing"
    await an.say("works again")
    code, _, _ = await fetch(server, "/healthz")
    assert code == 200


@ensureDeferred
async def test_metrics_and_health_answer_at_their_exact_paths_only(server):
    """A proxy hides /metrics by its path; chatbox must not serve it again
    one segment further down (its resources are leaves)."""
    assert (await fetch(server, "/metrics"))[0] == 200
    assert (await fetch(server, "/healthz"))[0] == 200
    for path in ("/metrics/", "/metrics/x", "/metrics/x/y", "/healthz/", "/healthz/x"):
        code, _, body = await fetch(server, path)
        assert code == 404, path
        assert b"chatbox_" not in body and b"persistence" not in body, path


@ensureDeferred
async def test_metrics_change_as_messages_flow(server):
    _, headers, before = await fetch(server, "/metrics")
    assert headers["content-type"].startswith("text/plain")
    before = before.decode()
    assert metric(before, "chatbox_messages_stored") == 0

    an = await server.user("An")
    bo = await server.user("Bo")
    for i in range(5):
        await an.say(f"m{i}")
    await bo.get()
    await bo.say("")  # refused: WrongFormatContent
    _, _, after = await fetch(server, "/metrics")
    after = after.decode()
    assert metric(after, "chatbox_connections") == 2
    assert metric(after, "chatbox_registered_users") == 2
    assert metric(after, "chatbox_messages_stored") == 5
    assert metric(after, "chatbox_requests_total", type="send", outcome="ok") == 5
    assert metric(after, "chatbox_requests_total", type="name", outcome="ok") == 2
    assert metric(after, "chatbox_requests_total", type="get", outcome="ok") == 1
    assert (
        metric(
            after, "chatbox_requests_total", type="send", outcome="WrongFormatContent"
        )
        == 1
    )
    assert metric(after, "chatbox_bytes_out_total") > metric(
        before, "chatbox_bytes_out_total"
    )
    assert metric(after, "chatbox_persistence_batch_messages_count") >= 1
    assert metric(after, "chatbox_persistence_write_seconds_count") >= 1
    assert "chatbox_slow_consumer_disconnects_total 0.0" in after


@ensureDeferred
async def test_per_room_series_only_when_asked_and_only_for_listed_rooms(data_file):
    from tests.client import connect
    from tests.server import start_server

    for asked in (False, True):
        server = await start_server(
            data_file,
            "--rooms=class-7a,secret-club",
            "--listed-rooms=class-7a",
            *(["--room-metrics"] if asked else []),
        )
        try:
            for room in ("class-7a", "secret-club", "secret-club"):
                client = await connect(f"{server.url}/{room}")
                await client.register(f"u{len(server.factory.connections)}")
            await client.say("hello")
            _, _, body = await fetch(server, "/metrics")
            text = body.decode()
            assert "secret-club" not in text, "an unlisted room is an invitation"
            assert metric(text, "chatbox_registered_users") == 3
            assert metric(text, "chatbox_rooms_open") == 2
            per_room = 'chatbox_room_registered_users{room="class-7a"} 1.0'
            assert (per_room in text) is asked
        finally:
            await server.stop()
