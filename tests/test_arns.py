"""ARNS over real WebSockets against a real server and a real cluster, and
twistd refusing to start without ICU; tests/unit/test_arns.py holds the rules
on their own."""

import signal
import subprocess
import sys

import pytest
from pytest_twisted import ensureDeferred

from tests.client import connect
from tests.process import child_env
from tests.test_cluster import (  # noqa: F401 (fixture)
    redis,
    redis_hash_fields,
    start_node,
    user,
)

# Seen by an attacker review: each looks exactly like `MS LAN`, which is
# `Ms Lan` in capitals, yet was accepted while `Ms Lan` was online.
CAPITALS_OF_MS_LAN = ["МS LAN", "MS LAΝ", "ΜS LAN", "Ms ᏞAN", "MS LAN"]

# -- over the wire --

LOOK_ALIKES_OF_ADMIN = [
    "admin ",
    " admin",
    "admin\u3164",
    "admin\u115f",
    "admin\uffa0",
    "adm\u034fin",
    "admin\ufe0f",
    "admin\u2800",
    "аdmin",  # Cyrillic а
    "ADMIN",
    "Admin",
    "ａｄｍｉｎ",
    "ADМIN",  # Cyrillic М: looks like ADMIN, which is admin in capitals
    "ꓮDMIN",  # Lisu ꓮ
]


@ensureDeferred
async def test_look_alikes_of_an_online_name_are_refused(server):
    admin = await server.user("admin")
    mallory = await server.client()
    for name in LOOK_ALIKES_OF_ADMIN:
        reply = await mallory.register(name)
        assert (reply["status"], reply["reason"]) == (False, "NameAlreadyUsed"), name
    assert (await mallory.register("Mallory"))["status"] is True
    for name in LOOK_ALIKES_OF_ADMIN:
        reply = await mallory.register(name)
        assert (reply["action"], reply["reason"]) == ("change", "NameAlreadyUsed")
    assert (await admin.get())["data"]["online"] == ["admin", "Mallory"]
    # The holder may change to a look-alike of its own name; it is shown as
    # typed, trailing space and all.
    assert (await admin.register("аdmin "))["status"] is True
    assert (await mallory.event())["newname"] == "аdmin "
    assert (await mallory.get())["data"]["online"] == ["аdmin ", "Mallory"]


@ensureDeferred
async def test_capitals_from_other_scripts_are_refused(server):
    """Cyrillic М, Greek Ν and Μ, Cherokee Ꮮ: capitals drawn as Latin ones."""
    lan = await server.user("Ms Lan")
    mallory = await server.client()
    for name in CAPITALS_OF_MS_LAN:
        reply = await mallory.register(name)
        assert (reply["status"], reply["reason"]) == (False, "NameAlreadyUsed"), name
    assert (await mallory.register("МS LAM"))["status"] is True  # not a look-alike
    assert (await lan.get())["data"]["online"] == ["Ms Lan", "МS LAM"]


@pytest.mark.parametrize(
    "name", ["\u3164", "\u3164\u3164", "\u2800", " \u115f\u1160 ", "\u034f", "\ufe0f"]
)
@ensureDeferred
async def test_a_name_of_only_invisible_characters_is_refused(server, name):
    client = await server.client()
    reply = await client.register(name)
    assert (reply["status"], reply["reason"]) == (False, "WrongFormatName")
    assert (await client.register("Visible"))["status"] is True
    reply = await client.register(name)
    assert (reply["action"], reply["reason"]) == ("change", "WrongFormatName")


@ensureDeferred
async def test_names_that_differ_by_tone_marks_are_all_online_at_once(server):
    names = ["Anh", "Ánh", "Ảnh", "Ãnh", "Ạnh", "Àng", "Đức", "Duc", "Dục"]
    for name in names:
        await server.user(name)
    watcher = await server.user("watcher")
    assert (await watcher.get())["data"]["online"] == [*names, "watcher"]


def test_without_icu_chatbox_refuses_to_start(tmp_path):
    """No silent fallback to weaker rules: twistd stops before touching any
    file, and says which package is missing."""
    hide_icu = (
        "import sys; sys.modules['icu'] = None; "
        "from twisted.scripts.twistd import run; "
        f"sys.argv = ['twistd', '-n', 'chatbox', '--port=tcp:0', "
        f"'--data={tmp_path / 'data.json'}']; run()"
    )
    done = subprocess.run(
        [sys.executable, "-c", hide_icu],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "pip install pyicu-wheels" in done.stderr
    assert list(tmp_path.iterdir()) == []


@ensureDeferred
async def test_capitals_from_other_scripts_are_refused_across_nodes(
    tmp_path,
    redis,  # noqa: F811
):
    """The third key travels to Redis with the other two (joined by a
    newline), is held and refused on another node, and freed by a rename."""
    one = await start_node(tmp_path, redis, "node1")
    two = await start_node(tmp_path, redis, "node2")
    try:
        lan = await user(one, "Ms Lan")
        mallory = await connect(two.url)
        for name in CAPITALS_OF_MS_LAN:
            reply = await mallory.register(name)
            assert reply["reason"] == "NameAlreadyUsed", (name, reply)
        # Its three keys: folded, as cased, and with М made M and folded.
        assert (await mallory.register("ADМIN"))["status"] is True
        assert redis_hash_fields(redis, b"chatbox:owner") == {
            b"rns lan",
            b"Ms Lan",
            "adʍin".encode(),
            b"ADMlN",
            b"adrnin",
        }
        for name in ("admin", "Admin", "ADMIN"):
            assert (await lan.register(name))["reason"] == "NameAlreadyUsed", name
        assert (await mallory.register("Mallory"))["status"] is True
        assert (await lan.register("admin"))["status"] is True  # all three freed
        assert redis_hash_fields(redis, b"chatbox:owner") == {
            b"adrnin",
            b"rnallory",
            b"Mallory",
        }
    finally:
        for node in (one, two):
            await node.kill(signal.SIGTERM)
