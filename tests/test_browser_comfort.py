"""What issue 12 says students expect of the bundled client in their first
five minutes, in a real Chromium: the remembered nickname, the welcome
line, unread counts and mentions, grouped bubbles with safe links, the
typing line, the phone layout, dark mode, and an axe-core audit.
"""

import time
from pathlib import Path
from typing import Any

import pytest
from pytest_twisted import ensureDeferred

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
    page_url,
    say,
    seeded,
    serious,
    set_hidden,
    skip_without_chromium,
)
from tests.server import start_server

if skip := skip_without_chromium():
    pytestmark = skip


def focused(page: Any) -> str:
    return page.evaluate("document.activeElement && document.activeElement.id")


@ensureDeferred
async def test_the_nickname_is_remembered_and_rejoined_on_reload(server):
    def scenario(browser: Browser) -> None:
        an = browser.join(page_url(server), "An", viewport=DESKTOP)
        assert focused(an) == "content"
        an.reload()
        an.wait_for_function("window.chatbox.state.registered")
        assert an.inner_text("#online-list .me .person") == "An (you)"
        assert an.locator("#name-form").is_hidden()
        assert focused(an) == "content"

    await in_browser(scenario)


@SIZES
@ensureDeferred
async def test_a_welcome_line_counts_who_is_online_before_joining(
    server, viewport, lang
):
    await server.user("Linh")
    await server.user("Minh")
    expected = {
        "en": "Welcome! 2 people are online.",
        "vi": "Chào mừng! Có 2 người đang trực tuyến.",
    }[lang]

    def scenario(browser: Browser) -> None:
        page = browser.page(page_url(server), viewport=viewport, locale=LOCALES[lang])
        page.wait_for_selector(f"#welcome >> text={expected}")
        assert page.locator("#name").is_visible()

    await in_browser(scenario)


@ensureDeferred
async def test_unread_count_in_the_title_mentions_and_notifications(server):
    bo = await server.user("Bo")

    def scenario(browser: Browser) -> None:
        an = browser.join(
            page_url(server),
            "An",
            viewport=DESKTOP,
            init=RECORD_NOTIFICATIONS,
            permissions=["notifications"],
        )
        an.click("#menu-button")
        an.check("#opt-notify")
        an.check("#opt-sound")
        an.keyboard.press("Escape")
        set_hidden(an, True)
        # A mention is @An; a bare "an" (an everyday Vietnamese word, as
        # in "an tâm") and @Anh are not.
        texts = ("hello everyone", "@An can you share the slides?", "an tâm, @Anh ơi")
        for text in texts:
            await_in_reactor(lambda text=text: bo.say(text))
        an.wait_for_selector("text=an tâm, @Anh ơi")
        assert an.title() == "(3) chatbox"
        assert an.evaluate("window.notified") == ["Bo", "Bo mentioned you", "Bo"]
        mentions = an.locator(".message.mention")
        assert mentions.count() == 1
        assert mentions.locator("mark").inner_text() == "@An"
        set_hidden(an, False)
        assert an.title() == "chatbox"
        an.reload()  # the toggles are remembered
        an.wait_for_function("window.chatbox.state.registered")
        an.click("#menu-button")
        assert an.is_checked("#opt-notify") and an.is_checked("#opt-sound")

    await in_browser(scenario)


@SIZES
@ensureDeferred
async def test_bubbles_grouped_with_colours_safe_links_and_sent_on_the_latest(
    tmp_path: Path, viewport, lang
):
    minute = (int(time.time()) - 86400) // 60 * 60
    data = seeded(
        tmp_path,
        [
            ("Linh", "Good morning!", minute + 5),
            ("Linh", "Slides: https://example.com/slides?week=3.", minute + 20),
            ("Minh", 'javascript:alert(1) <b>not bold</b> <a href="x">', minute + 40),
            ("Linh", "a minute later", minute + 70),
        ],
    )
    server = await start_server(data)
    try:

        def scenario(browser: Browser) -> None:
            an = browser.join(
                page_url(server), "An", viewport=viewport, locale=LOCALES[lang]
            )
            an.wait_for_selector("text=a minute later")
            grouped = an.eval_on_selector_all(
                ".message", "els => els.map(e => e.classList.contains('cont'))"
            )
            assert grouped == [False, True, False, False]
            links = an.locator(".message a")
            assert links.count() == 1
            assert links.evaluate("a => [a.href, a.rel, a.target, a.textContent]") == [
                "https://example.com/slides?week=3",
                "noopener noreferrer",
                "_blank",
                "https://example.com/slides?week=3",
            ]
            assert an.locator(".message b").count() == 0
            hues = an.eval_on_selector_all(
                ".message .avatar",
                "els => els.map(e => [e.textContent, e.style.getPropertyValue("
                "'--hue')])",
            )
            assert hues[0] == hues[1] == hues[3] and hues[0][0] == "L"
            assert hues[2][0] == "M" and hues[2][1] != hues[0][1]
            bubble = an.locator(".message .bubble").first.bounding_box()
            log = an.locator("#messages").bounding_box()
            assert bubble["width"] < log["width"] / 2, "bubbles fit their text"
            say(an, "one")
            say(an, "two")
            states = an.eval_on_selector_all(
                ".message.mine",
                "els => els.map(e => e.querySelector('.state')?.textContent ?? null)",
            )
            assert states == [None, {"en": "sent", "vi": "đã gửi"}[lang]]

        await in_browser(scenario)
    finally:
        await server.stop()


@ensureDeferred
async def test_typing_shows_for_others_and_stops_with_the_message(server):
    url = page_url(server)

    def scenario(browser: Browser) -> None:
        an = browser.join(url, "An", viewport=DESKTOP)
        # Bo's clock stands still: however fast he types, one request is due.
        sent: list[str] = []

        def setup(page: Any) -> None:
            page.clock.install()
            page.on(
                "websocket", lambda ws: ws.on("framesent", lambda f: sent.append(f))
            )

        bo = browser.page(url, viewport=DESKTOP, setup=setup)
        bo.clock.pause_at(bo.evaluate("Date.now()") + 1000)
        join(bo, "Bo")
        bo.type("#content", "xin chào")
        an.wait_for_selector("#typing >> text=Bo is typing…")
        assert bo.inner_text("#typing") == ""
        bo.press("#content", "Enter")
        an.wait_for_selector("#message-list >> text=xin chào")
        assert an.inner_text("#typing") == ""
        assert sum('"typing"' in frame for frame in sent) == 1

    await in_browser(scenario)


@ensureDeferred
async def test_the_phone_layout(server):
    def scenario(browser: Browser) -> None:
        page = browser.join(page_url(server), "Chi", **TOUCH_PHONE)
        # A compact header: a dot for the status, the rest in the menu.
        assert page.locator("#status .dot").is_visible()
        assert page.inner_text("#status") == "Connected"
        assert page.locator("#language").is_hidden()
        page.click("#menu-button")
        assert page.locator("#language").is_visible()
        assert page.locator("#connection").is_visible()
        page.keyboard.press("Escape")
        # Who is online, on demand.
        assert page.locator("#online-list").is_hidden()
        page.click("#online-toggle")
        assert page.get_attribute("#online-toggle", "aria-expanded") == "true"
        assert page.inner_text("#online-list .me .person") == "Chi (you)"
        page.click("#online-toggle")
        # Enter makes a new line on a touch keyboard; Send sends.
        page.focus("#content")
        page.keyboard.type("two")
        page.keyboard.press("Enter")
        page.keyboard.type("lines")
        assert page.input_value("#content") == "two\nlines"
        page.tap("#send")
        page.wait_for_selector(".message.mine[data-state=sent]")
        assert page.inner_text(".message.mine .text") == "two\nlines"
        # A counter once the limit is near.
        page.fill("#content", "x" * 3499)
        assert page.inner_text("#counter") == ""
        page.fill("#content", "x" * 3600)
        assert page.inner_text("#counter") == "3600 / 4000"

    await in_browser(scenario)


def background(page: Any) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


@ensureDeferred
async def test_dark_mode_follows_the_system_and_the_switch_is_remembered(server):
    def scenario(browser: Browser) -> None:
        page = browser.join(page_url(server), "An", color_scheme="dark")
        assert background(page) == "rgb(20, 23, 26)"
        page.click("#menu-button")
        page.select_option("#theme", "light")
        assert background(page) == "rgb(242, 244, 247)"
        page.reload()
        page.wait_for_function("window.chatbox.state.registered")
        assert background(page) == "rgb(242, 244, 247)"
        # And the other way: Dark chosen on a light system (the menu's own
        # rule, not the system's media query, must do it).
        light = browser.join(page_url(server), "Bo", color_scheme="light")
        assert background(light) == "rgb(242, 244, 247)"
        light.click("#menu-button")
        light.select_option("#theme", "dark")
        assert background(light) == "rgb(20, 23, 26)"

    await in_browser(scenario)


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
@ensureDeferred
async def test_no_serious_accessibility_findings(tmp_path: Path, viewport):
    yesterday = int(time.time()) - 86400
    data = seeded(
        tmp_path,
        [
            ("Linh", "Slides: https://example.com/slides", yesterday),
            ("Minh", "Chào cả lớp!", yesterday + 30),
        ],
    )
    server = await start_server(data)
    try:
        bo = await server.user("Bo")

        def scenario(browser: Browser) -> None:
            before = browser.page(page_url(server), viewport=viewport)
            assert serious(before) == []  # the nickname form
            an = browser.join(page_url(server), "An", viewport=viewport)
            await_in_reactor(lambda: bo.say("@An are you coming?"))
            say(an, "On my way")
            in_reactor(bo.send_json, {"type": "typing"})
            an.wait_for_selector("#typing:not(:empty)")
            found = {}
            for theme in ("light", "dark"):
                an.click("#menu-button")
                an.select_option("#theme", theme)
                an.click("#rename-open")
                found[theme] = serious(an)
                an.keyboard.press("Escape")
                if viewport is PHONE:  # the online list is a panel of its own
                    an.click("#online-toggle")
                    found[theme] += serious(an)
                    an.click("#online-toggle")
            assert found == {"light": [], "dark": []}

        await in_browser(scenario)
    finally:
        await server.stop()
