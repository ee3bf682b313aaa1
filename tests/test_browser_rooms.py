"""Issue 13's rooms as the bundled client shows them, in a real Chromium
against a real server: the page joins the room of its own path, says which
room it is in, shares its link, moves between listed rooms with the same
nickname, and comes back to the same room after the server restarts.

A class's two rooms, class-7a and class-7b, are listed; nothing said in one
may reach the other, on screen or in history.
"""

import re
from pathlib import Path
from typing import Any

import pytest
from pytest_twisted import ensureDeferred

from tests import process
from tests.chromium import (
    DESKTOP,
    LOCALES,
    PHONE,
    RECORD_NOTIFICATIONS,
    SIZES,
    TOUCH_PHONE,
    Browser,
    await_in_reactor,
    in_browser,
    in_reactor,
    join,
    message_texts,
    say,
    serious,
    set_hidden,
    skip_without_chromium,
)
from tests.client import connect
from tests.server import RunningServer, start_server

if skip := skip_without_chromium():
    pytestmark = skip

ROOMS = ("--rooms=class-7a,class-7b", "--listed-rooms=class-7a,class-7b")

TEXT = {
    "en": {
        "main": "Main room",
        "online": lambda n: f"{n} online",
        "copied": "Copied",
        "by_hand": "Selected: press Ctrl+C to copy",
        "rooms": "Rooms",
        "share": "Link to this room",
        "connected": "Connected",
        "gone": "This room does not exist on this server.",
        "no_room": "No such room",
        "connect": "Connect",
    },
    "vi": {
        "main": "Phòng chung",
        "online": lambda n: f"{n} trực tuyến",
        "copied": "Đã sao chép",
        "by_hand": "Đã chọn: nhấn Ctrl+C để sao chép",
        "rooms": "Phòng",
        "share": "Liên kết tới phòng này",
        "connected": "Đã kết nối",
        "gone": "Phòng này không có trên máy chủ này.",
        "no_room": "Không có phòng này",
        "connect": "Kết nối",
    },
}

# The switcher as a user reads it: each room's name, online count and
# whether it is the room this page is in.
SWITCHER = """els => els.map(a => [
  a.querySelector('.room-name').textContent,
  a.querySelector('.room-online')?.textContent ?? null,
  a.getAttribute('aria-current') === 'page',
])"""


async def rooms_server(data: Path, *args: str) -> RunningServer:
    return await start_server(data, *ROOMS, *args)


def base(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def switcher(page: Any) -> list[list]:
    page.wait_for_selector("#rooms:not([hidden]) #room-list a")
    return page.eval_on_selector_all("#room-list a", SWITCHER)


def open_menu(page: Any) -> None:
    if page.locator("#menu").is_hidden():
        page.click("#menu-button")


def close_menu(page: Any) -> None:
    if page.locator("#menu").is_visible():
        page.keyboard.press("Escape")


def heading(page: Any) -> str:
    return page.inner_text("#heading")


async def history(server: RunningServer, room: str) -> list[str]:
    """A room's stored messages, as a newcomer's `get` sees them."""
    checker = await connect(f"{server.url}/{room}")
    try:
        reply = await checker.register("Checker")
        assert reply["status"] is True, reply
        got = await checker.get()
        return [m["content"] for m in got["data"]["message"]]
    finally:
        checker.abort()


def record_sockets(into: list[str]) -> Any:
    def setup(page: Any) -> None:
        page.on("websocket", lambda ws: into.append(ws.url))

    return setup


@SIZES
@ensureDeferred
async def test_moving_between_rooms_and_back_after_a_restart(
    tmp_path: Path, viewport, lang
):
    data = tmp_path / "data.json"
    servers = [await rooms_server(data)]
    words = TEXT[lang]
    try:
        port = servers[0].port
        url = base(servers[0])
        options = {"viewport": viewport, "locale": LOCALES[lang]}

        async def restart() -> None:
            await servers[-1].stop()
            servers.append(
                await rooms_server(data, f"--port=tcp:{port}:interface=127.0.0.1")
            )

        def scenario(browser: Browser) -> None:
            bo = browser.join(f"{url}/class-7b", "Bo", **options)
            say(bo, "only in 7b")
            chi = browser.join(f"{url}/class-7a", "Chi", **options)
            sockets: list[str] = []
            an = browser.page(
                f"{url}/class-7a",
                setup=record_sockets(sockets),
                permissions=["clipboard-read", "clipboard-write"],
                **options,
            )
            join(an, "An")
            say(an, "only in 7a")
            chi.wait_for_selector("#message-list >> text=only in 7a")
            say(bo, "still in 7b")
            assert message_texts(bo) == ["only in 7b", "still in 7b"]
            assert "An" not in bo.evaluate("window.chatbox.state.online")

            # Which room: the title and the header say so.
            assert an.title() == "class-7a · chatbox"
            assert heading(an) == "class-7a · chatbox"

            # The share link holds this room's address, and copies it.
            open_menu(an)
            assert an.input_value("#share-url") == f"{url}/class-7a"
            an.click("#share-copy")
            an.wait_for_selector(f"#share-feedback >> text={words['copied']}")
            assert an.evaluate("navigator.clipboard.readText()") == f"{url}/class-7a"

            # The switcher: the way back to the main room, then each listed
            # room with who is in it.
            assert switcher(an) == [
                [words["main"], None, False],
                ["class-7a", words["online"](2), True],
                ["class-7b", words["online"](1), False],
            ]
            an.click("#room-list a >> text=class-7b")
            an.wait_for_url(f"{url}/class-7b")
            an.wait_for_function("window.chatbox.state.registered")
            assert an.evaluate("window.chatbox.state.myName") == "An"
            assert an.locator("#name-form").is_hidden()
            an.wait_for_selector("#message-list >> text=still in 7b")
            assert message_texts(an) == ["only in 7b", "still in 7b"]
            assert an.title() == "class-7b · chatbox"
            assert heading(an) == "class-7b · chatbox"
            bo.wait_for_function(
                "window.chatbox.state.online.includes('An')", timeout=5000
            )
            open_menu(an)
            assert an.input_value("#share-url") == f"{url}/class-7b"
            assert switcher(an) == [
                [words["main"], None, False],
                ["class-7a", words["online"](1), False],
                ["class-7b", words["online"](2), True],
            ]
            close_menu(an)

            # The server restarts: the page comes back to class-7b, as An.
            before = len(sockets)
            await_in_reactor(servers[-1].stop)
            an.wait_for_function("!window.chatbox.state.registered")
            await_in_reactor(restart)
            an.wait_for_function("window.chatbox.state.registered", timeout=20_000)
            assert len(sockets) > before
            assert sockets[0] == f"ws://127.0.0.1:{port}/class-7a"
            assert set(sockets[1:]) == {f"ws://127.0.0.1:{port}/class-7b"}, sockets
            assert an.evaluate("window.chatbox.state.myName") == "An"
            bo.wait_for_function("window.chatbox.state.registered", timeout=20_000)
            say(an, "after the restart")
            bo.wait_for_selector("#message-list >> text=after the restart")
            server = servers[-1]
            assert await_in_reactor(lambda: history(server, "class-7b")) == [
                "only in 7b",
                "still in 7b",
                "after the restart",
            ]
            assert await_in_reactor(lambda: history(server, "class-7a")) == [
                "only in 7a"
            ]
            default = await_in_reactor(lambda: history(server, ""))
            assert default == [], default

        await in_browser(scenario)
    finally:
        await servers[-1].stop()


def record_checks(sockets: list[str], checks: list[str]) -> Any:
    """The page's WebSocket attempts, and its HEAD requests for its own page."""

    def setup(page: Any) -> None:
        record_sockets(sockets)(page)
        page.on("request", lambda r: r.method == "HEAD" and checks.append(r.url))

    return setup


def gone_links(page: Any) -> list[list]:
    return page.eval_on_selector_all("#gone-list a", SWITCHER)


def refused_lines_only(browser: Browser) -> None:
    """The browser's own lines about a refused handshake or a failed load
    (the 404 the page asked about, a server that is down) are all there is."""
    browser.errors[:] = [
        e
        for e in browser.errors
        if not e.startswith(("WebSocket connection to", "Failed to load resource"))
    ]


# The page at /class-7a finds itself at /class-7c before its script runs
# (and only there: the script runs again at every page the test goes to).
AT_CLASS_7C = """
if (location.pathname === "/class-7a") history.replaceState(null, "", "/class-7c");
"""

# Long enough for two more attempts had the page gone on retrying: the
# backoff is 1 s then 2 s (plus up to 0.5 s each).
QUIET = 5000


@SIZES
@ensureDeferred
async def test_a_room_gone_after_a_restart_says_so_and_stops_retrying(
    tmp_path: Path, viewport, lang
):
    """The server restarts with another --rooms list: the page's room is
    refused at the handshake, which the page cannot see, so it asks about
    its own page, hears 404, and stops."""
    data = tmp_path / "data.json"
    servers = [await start_server(data, "--rooms=class-7a")]
    words = TEXT[lang]
    try:
        port = servers[0].port
        url = base(servers[0])

        async def restart() -> None:
            await servers[-1].stop()
            servers.append(
                await start_server(
                    data,
                    "--rooms=class-7b",
                    "--listed-rooms=class-7b",
                    f"--port=tcp:{port}:interface=127.0.0.1",
                )
            )

        def scenario(browser: Browser) -> None:
            sockets: list[str] = []
            checks: list[str] = []
            an = browser.page(
                f"{url}/class-7a",
                setup=record_checks(sockets, checks),
                viewport=viewport,
                locale=LOCALES[lang],
            )
            join(an, "An")
            say(an, "before the restart")
            assert checks == []
            await_in_reactor(restart)
            an.wait_for_selector("#gone:not([hidden])", timeout=20_000)
            assert an.inner_text("#gone [role=alert]") == words["gone"]
            assert an.inner_text("#status") == words["no_room"]
            # The way out: the main room, and the switcher's listed rooms.
            assert gone_links(an) == [
                [words["main"], None, False],
                ["class-7b", words["online"](0), False],
            ]
            assert fits(an, "#gone")
            open_menu(an)  # on a phone the connection button is in the menu
            assert an.inner_text("#connection") == words["connect"]
            found = {}
            for theme in ("light", "dark"):
                open_menu(an)
                an.select_option("#theme", theme)
                close_menu(an)
                found[theme] = serious(an)
            assert found == {"light": [], "dark": []}
            for hidden in ("#composer", "#name-form", "#retry-now"):
                assert an.locator(hidden).is_hidden(), hidden
            # What the page saw before the message stays on screen.
            assert message_texts(an) == ["before the restart"]
            assert set(sockets) == {f"ws://127.0.0.1:{port}/class-7a"}, sockets
            assert len(sockets) >= 2, sockets  # the first, then a refused one
            assert set(checks) == {f"{url}/class-7a"}, checks
            attempts, asked = len(sockets), len(checks)
            an.wait_for_timeout(QUIET)
            assert (len(sockets), len(checks)) == (attempts, asked), sockets
            assert an.locator("#gone").is_visible()

            an.click("#gone-list a >> text=class-7b")
            an.wait_for_url(f"{url}/class-7b")
            an.wait_for_function("window.chatbox.state.registered")
            assert an.evaluate("window.chatbox.state.myName") == "An"
            assert an.locator("#gone").is_hidden()
            refused_lines_only(browser)

        await in_browser(scenario)
    finally:
        await servers[-1].stop()


@ensureDeferred
async def test_a_room_refused_at_the_first_attempt_says_so(tmp_path: Path):
    """A page whose room was never there (here: a page at /class-7a that
    finds itself at /class-7c before its script runs, as a stale tab or a
    cached page would): one attempt, one question, the message."""
    server = await rooms_server(tmp_path / "data.json")
    try:
        url = base(server)

        def scenario(browser: Browser) -> None:
            sockets: list[str] = []
            checks: list[str] = []
            page = browser.page(
                f"{url}/class-7a",
                viewport=DESKTOP,
                setup=record_checks(sockets, checks),
                init=AT_CLASS_7C,
            )
            page.wait_for_selector("#gone:not([hidden])")
            assert page.inner_text("#gone [role=alert]") == TEXT["en"]["gone"]
            assert gone_links(page) == [
                ["Main room", None, False],
                ["class-7a", "0 online", False],
                ["class-7b", "0 online", False],
            ]
            page.wait_for_timeout(QUIET)
            assert sockets == [f"ws://127.0.0.1:{server.port}/class-7c"]
            assert checks == [f"{url}/class-7c"]
            # Connect, by hand: one more try, and the same answer.
            page.click("#connection")
            page.wait_for_function("window.chatbox.state.gone", timeout=10_000)
            assert len(sockets) == 2 and len(checks) == 2, (sockets, checks)
            page.click("#gone-list a >> text=Main room")
            page.wait_for_url(f"{url}/")
            join(page, "An")
            refused_lines_only(browser)

        await in_browser(scenario)
    finally:
        await server.stop()


@ensureDeferred
async def test_a_server_that_is_down_is_retried_as_before(tmp_path: Path):
    """No answer to the question is no answer, not "does not exist". The
    server is a real process, killed: a server stopped in this process
    would still answer on the page's open keep-alive connection."""
    child = await process.start(tmp_path, *ROOMS)
    servers: list[RunningServer] = []
    try:
        port = child.port
        url = f"http://127.0.0.1:{port}"

        async def start_again() -> None:
            servers.append(
                await rooms_server(
                    tmp_path / "data.json", f"--port=tcp:{port}:interface=127.0.0.1"
                )
            )

        def scenario(browser: Browser) -> None:
            sockets: list[str] = []
            checks: list[str] = []
            failed: list[str] = []

            def setup(page: Any) -> None:
                record_checks(sockets, checks)(page)
                page.on(
                    "requestfailed",
                    lambda r: r.method == "HEAD" and failed.append(r.url),
                )

            an = browser.page(f"{url}/class-7a", viewport=DESKTOP, setup=setup)
            join(an, "An")
            before = len(sockets)
            in_reactor(child.kill)
            # Three refused attempts, each with its question unanswered.
            an.wait_for_function(
                "window.chatbox.state.backoff >= 16000", timeout=20_000
            )
            an.wait_for_function("!window.chatbox.state.checking")
            assert len(sockets) >= before + 3, sockets
            assert len(checks) >= 3, checks
            assert failed == checks, (failed, checks)
            assert an.locator("#gone").is_hidden()
            assert an.locator("#retry-now").is_visible()
            assert an.inner_text("#status").startswith("Connection lost, retrying")
            # And when it is back, so is the page, in its room.
            await_in_reactor(start_again)
            an.click("#retry-now")
            an.wait_for_function("window.chatbox.state.registered", timeout=20_000)
            assert sockets[-1] == f"ws://127.0.0.1:{port}/class-7a"
            refused_lines_only(browser)

        await in_browser(scenario)
    finally:
        await child.kill()
        for server in servers:
            await server.stop()


@pytest.mark.parametrize("status", [429, 502])
@ensureDeferred
async def test_any_answer_but_404_is_retried_as_before(tmp_path: Path, status):
    """A proxy in front may answer for a server it cannot reach: only the
    server's own 404 for the page means the room is gone (and its 403, a
    banned address: tests/test_browser_moderation.py)."""
    server = await rooms_server(tmp_path / "data.json")
    try:
        url = base(server)

        def scenario(browser: Browser) -> None:
            sockets: list[str] = []
            checks: list[str] = []

            def setup(page: Any) -> None:
                record_checks(sockets, checks)(page)

                def proxy(route: Any) -> None:
                    if route.request.method == "HEAD":
                        route.fulfill(status=status, body="")
                    else:
                        route.continue_()

                page.route(f"{url}/class-7c", proxy)

            page = browser.page(
                f"{url}/class-7a",
                viewport=DESKTOP,
                setup=setup,
                init=AT_CLASS_7C,
            )
            page.wait_for_function(
                "window.chatbox.state.backoff >= 8000", timeout=20_000
            )
            page.wait_for_function("!window.chatbox.state.checking")
            assert len(sockets) >= 3 and len(checks) >= 3, (sockets, checks)
            assert page.locator("#gone").is_hidden()
            assert page.locator("#retry-now").is_visible()
            refused_lines_only(browser)

        await in_browser(scenario)
    finally:
        await server.stop()


@ensureDeferred
async def test_the_default_room_is_as_before_with_a_way_to_the_others(
    tmp_path: Path,
):
    server = await rooms_server(tmp_path / "data.json")
    try:
        url = base(server)

        def scenario(browser: Browser) -> None:
            an = browser.join(f"{url}/", "An", viewport=DESKTOP)
            assert an.title() == "chatbox"
            assert heading(an) == "chatbox"
            assert an.locator("#heading a").count() == 0
            open_menu(an)
            assert an.input_value("#share-url") == f"{url}/"
            assert switcher(an) == [
                ["Main room", None, True],
                ["class-7a", "0 online", False],
                ["class-7b", "0 online", False],
            ]
            an.click("#room-list a >> text=class-7a")
            an.wait_for_url(f"{url}/class-7a")
            an.wait_for_function("window.chatbox.state.registered")
            assert an.evaluate("window.chatbox.state.myName") == "An"
            # And back: the switcher's first entry, or the header's "chatbox".
            an.click("#heading a")
            an.wait_for_url(f"{url}/")
            an.wait_for_function("window.chatbox.state.registered")
            assert an.title() == "chatbox"

        await in_browser(scenario)
    finally:
        await server.stop()


@ensureDeferred
async def test_a_trailing_slash_or_capitals_land_in_the_canonical_room(
    tmp_path: Path,
):
    server = await rooms_server(tmp_path / "data.json")
    try:
        url = base(server)

        def scenario(browser: Browser) -> None:
            for path in ("/class-7a/", "/Class-7A", "/CLASS-7A/"):
                sockets: list[str] = []
                page = browser.page(
                    url + path, viewport=DESKTOP, setup=record_sockets(sockets)
                )
                assert page.url == f"{url}/class-7a", path
                join(page, "An")
                assert page.title() == "class-7a · chatbox", path
                assert sockets == [f"ws://127.0.0.1:{server.port}/class-7a"], path
                page.click("#menu-button")
                assert page.input_value("#share-url") == f"{url}/class-7a", path
                page.context.close()

        await in_browser(scenario)
    finally:
        await server.stop()


@ensureDeferred
async def test_the_page_at_a_trailing_slash_still_joins_its_room(tmp_path: Path):
    """The server redirects /class-7a/ to /class-7a, but a proxy in front
    may not: the page, finding itself at /class-7a/, is still in class-7a.
    (The page is loaded at /class-7a and its address changed before its
    script runs: a page fulfilled by the test itself would not be allowed
    to reach 127.0.0.1 at all.)"""
    server = await rooms_server(tmp_path / "data.json")
    try:
        url = base(server)

        def scenario(browser: Browser) -> None:
            sockets: list[str] = []
            page = browser.page(
                f"{url}/class-7a",
                viewport=DESKTOP,
                setup=record_sockets(sockets),
                init="history.replaceState(null, '', '/class-7a/');",
            )
            assert page.evaluate("location.pathname") == "/class-7a/"
            join(page, "An")
            assert page.title() == "class-7a · chatbox"
            assert heading(page) == "class-7a · chatbox"
            assert sockets == [f"ws://127.0.0.1:{server.port}/class-7a"]
            open_menu(page)
            assert page.input_value("#share-url") == f"{url}/class-7a"

        await in_browser(scenario)
    finally:
        await server.stop()


@ensureDeferred
async def test_the_room_list_is_asked_for_when_the_menu_opens_not_in_a_loop(
    tmp_path: Path,
):
    server = await rooms_server(tmp_path / "data.json")
    try:
        url = base(server)

        def scenario(browser: Browser) -> None:
            asked: list[str] = []

            def setup(page: Any) -> None:
                page.clock.install()
                page.on(
                    "request",
                    lambda r: r.url.endswith("/rooms") and asked.append(r.url),
                )

            an = browser.page(f"{url}/class-7a", viewport=DESKTOP, setup=setup)
            join(an, "An")
            assert asked == []  # nothing before the menu opens
            for _ in range(20):
                an.click("#menu-button")
                an.click("#menu-button")
            an.click("#menu-button")
            switcher(an)
            assert len(asked) == 1, asked
            close_menu(an)
            an.clock.fast_forward(11_000)
            open_menu(an)
            an.wait_for_function("!window.chatbox.state.roomsLoading")
            assert len(asked) == 2, asked

        await in_browser(scenario)
    finally:
        await server.stop()


ROOM_LISTS = {
    "failed": lambda route: route.fulfill(status=500, body="no"),
    "empty": lambda route: route.fulfill(json={"rooms": []}),
    "not json": lambda route: route.fulfill(body="<html>", content_type="text/html"),
    "not a list": lambda route: route.fulfill(json={"rooms": {"class-7a": 1}}),
    "unreachable": lambda route: route.abort(),
}


@pytest.mark.parametrize("answer", list(ROOM_LISTS), ids=list(ROOM_LISTS))
@ensureDeferred
async def test_no_room_list_no_switcher_and_no_error(tmp_path: Path, answer):
    server = await rooms_server(tmp_path / "data.json")
    try:
        url = base(server)

        def scenario(browser: Browser) -> None:
            answered: list[str] = []

            def setup(page: Any) -> None:
                def route(r: Any) -> None:
                    answered.append(r.request.url)
                    ROOM_LISTS[answer](r)

                page.route(f"{url}/rooms", route)

            an = browser.page(f"{url}/class-7a", viewport=DESKTOP, setup=setup)
            join(an, "An")
            open_menu(an)
            an.wait_for_function("!window.chatbox.state.roomsLoading")
            assert answered == [f"{url}/rooms"]
            assert an.locator("#rooms").is_hidden()
            assert an.locator("#share-url").is_visible()
            # The browser's own line about a failed load is all there is.
            browser.errors[:] = [
                e for e in browser.errors if not e.startswith("Failed to load resource")
            ]

        await in_browser(scenario)
    finally:
        await server.stop()


@ensureDeferred
async def test_only_room_names_from_the_list_become_links(tmp_path: Path):
    server = await rooms_server(tmp_path / "data.json")
    try:
        url = base(server)
        hostile = {
            "rooms": [
                {"name": "<img src=x onerror=alert(1)>", "online": 1},
                {"name": "javascript:alert(1)", "online": 1},
                {"name": "../admin", "online": 1},
                {"name": "//evil.example", "online": 1},
                {"name": "class-7a", "online": "<b>3</b>"},
                {"name": "class-7b", "online": 4, "last_activity": None},
                "class-7c",
                None,
            ]
        }

        def scenario(browser: Browser) -> None:
            def setup(page: Any) -> None:
                page.route(f"{url}/rooms", lambda r: r.fulfill(json=hostile))

            an = browser.page(f"{url}/class-7a", viewport=DESKTOP, setup=setup)
            join(an, "An")
            open_menu(an)
            assert switcher(an) == [
                ["Main room", None, False],
                ["class-7a", None, True],
                ["class-7b", "4 online", False],
            ]
            hrefs = an.eval_on_selector_all(
                "#room-list a", "els => els.map(a => a.href)"
            )
            assert hrefs == [f"{url}/", f"{url}/class-7a", f"{url}/class-7b"]
            assert an.locator("#menu img, #menu b").count() == 0

        await in_browser(scenario)
    finally:
        await server.stop()


# No clipboard API (plain http on a school's network) and a browser that
# will not copy either: the link is selected for the user to copy.
NO_CLIPBOARD = """
Object.defineProperty(Navigator.prototype, "clipboard", {get: () => undefined});
document.execCommand = () => false;
"""


@SIZES
@ensureDeferred
async def test_without_a_clipboard_the_link_is_selected(tmp_path: Path, viewport, lang):
    server = await rooms_server(tmp_path / "data.json")
    try:
        url = base(server)

        def scenario(browser: Browser) -> None:
            an = browser.page(
                f"{url}/class-7b",
                viewport=viewport,
                locale=LOCALES[lang],
                init=NO_CLIPBOARD,
            )
            open_menu(an)
            an.click("#share-copy")
            an.wait_for_selector(f"#share-feedback >> text={TEXT[lang]['by_hand']}")
            selected = an.evaluate(
                """() => { const e = document.activeElement;
                  return [e.id, e.value.slice(e.selectionStart, e.selectionEnd)]; }"""
            )
            assert selected == ["share-url", f"{url}/class-7b"]

        await in_browser(scenario)
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("first", "second"), [("en", "vi"), ("vi", "en")], ids=["en-vi", "vi-en"]
)
@ensureDeferred
async def test_the_room_controls_are_translated_on_a_language_switch(
    tmp_path: Path, first, second
):
    server = await rooms_server(tmp_path / "data.json")
    try:
        url = base(server)

        def scenario(browser: Browser) -> None:
            an = browser.join(
                f"{url}/class-7a",
                "An",
                viewport=DESKTOP,
                locale=LOCALES[first],
                permissions=["clipboard-read", "clipboard-write"],
            )
            open_menu(an)
            switcher(an)
            an.click("#share-copy")
            an.wait_for_selector(f"#share-feedback >> text={TEXT[first]['copied']}")
            an.select_option("#language", second)
            words = TEXT[second]
            assert an.inner_text("#rooms-title") == words["rooms"]
            assert an.inner_text("label[for=share-url]") == words["share"]
            assert an.inner_text("#share-feedback") == words["copied"]
            assert switcher(an) == [
                [words["main"], None, False],
                ["class-7a", words["online"](1), True],
                ["class-7b", words["online"](0), False],
            ]
            copy = {"en": "Copy", "vi": "Sao chép"}[second]
            assert an.inner_text("#share-copy") == copy

        await in_browser(scenario)
    finally:
        await server.stop()


@ensureDeferred
async def test_unread_title_and_notifications_name_the_room(tmp_path: Path):
    server = await rooms_server(tmp_path / "data.json")
    try:
        url = base(server)

        def scenario(browser: Browser) -> None:
            bo = browser.join(f"{url}/class-7b", "Bo", viewport=DESKTOP)
            an = browser.join(
                f"{url}/class-7b",
                "An",
                viewport=DESKTOP,
                init=RECORD_NOTIFICATIONS,
                permissions=["notifications"],
            )
            open_menu(an)
            an.check("#opt-notify")
            close_menu(an)
            set_hidden(an, True)
            say(bo, "hello")
            say(bo, "@An homework?")
            an.wait_for_selector("text=@An homework?")
            assert an.title() == "(2) class-7b · chatbox"
            assert an.evaluate("window.notified") == [
                "Bo · class-7b",
                "Bo mentioned you · class-7b",
            ]
            set_hidden(an, False)
            assert an.title() == "class-7b · chatbox"

        await in_browser(scenario)
    finally:
        await server.stop()


def fits(page: Any, selector: str) -> bool:
    """Inside the viewport, and the page does not scroll sideways."""
    return page.evaluate(
        """s => { const r = document.querySelector(s).getBoundingClientRect();
          return r.left >= 0 && r.right <= innerWidth && r.top >= 0
            && r.bottom <= innerHeight
            && document.documentElement.scrollWidth <= innerWidth; }""",
        selector,
    )


# Nothing is drawn over the middle of the element.
UNCOVERED = """s => {
  const e = document.querySelector(s), r = e.getBoundingClientRect();
  return e.contains(document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2));
}"""


@ensureDeferred
async def test_the_phone_layout_with_the_longest_room_name(tmp_path: Path):
    longest = "theclassroomofthewholeschoolyear2026to27"  # nowhere to break
    assert len(longest) == 40
    server = await start_server(
        tmp_path / "data.json",
        f"--rooms=class-7a,{longest}",
        f"--listed-rooms=class-7a,{longest}",
    )
    try:
        url = base(server)

        def scenario(browser: Browser) -> None:
            page = browser.join(f"{url}/{longest}", "Chi", **TOUCH_PHONE)
            assert heading(page).startswith(longest)
            assert fits(page, "#heading")
            assert fits(page, "#menu-button")
            assert page.inner_text("#status") == "Connected"
            # The online panel opens under the header, however tall the
            # name makes it: its toggle stays uncovered, to close it again.
            page.tap("#online-toggle")
            assert page.locator("#online").is_visible()
            assert fits(page, "#online")
            assert page.evaluate(UNCOVERED, "#online-toggle")
            page.tap("#online-toggle")
            assert page.locator("#online").is_hidden()
            open_menu(page)
            switcher(page)
            assert fits(page, "#menu")
            assert page.locator("#share-copy").is_visible()
            page.tap("#room-list a >> text=class-7a")
            page.wait_for_url(f"{url}/class-7a")
            page.wait_for_function("window.chatbox.state.registered")
            assert page.evaluate("window.chatbox.state.myName") == "Chi"

        await in_browser(scenario)
    finally:
        await server.stop()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
@ensureDeferred
async def test_no_serious_accessibility_findings_in_a_room(tmp_path: Path, viewport):
    server = await rooms_server(tmp_path / "data.json")
    try:
        url = base(server)

        def scenario(browser: Browser) -> None:
            an = browser.join(
                f"{url}/class-7a",
                "An",
                viewport=viewport,
                permissions=["clipboard-read", "clipboard-write"],
            )
            say(an, "hello 7a")
            found = {}
            for theme in ("light", "dark"):
                open_menu(an)
                an.select_option("#theme", theme)
                switcher(an)
                an.click("#share-copy")
                an.wait_for_selector("#share-feedback:not(:empty)")
                found[theme] = serious(an)
                close_menu(an)
            assert found == {"light": [], "dark": []}

        await in_browser(scenario)
    finally:
        await server.stop()


def test_the_page_refers_to_its_files_by_absolute_paths() -> None:
    """The page lives at /NAME: a relative link or file would resolve
    against it. Everything the page loads or links to starts with /."""
    page = (Path(__file__).parent.parent / "chatbox/web/static/index.html").read_text()
    for reference in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert reference.startswith(("/", "data:")), reference
