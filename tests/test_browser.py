"""The bundled browser client, in a real headless Chromium (Debian's).

The server runs in the test reactor; Playwright drives Chromium from a
worker thread, and steps that need the server (dropping every socket,
posting as another user) cross back into the reactor.
"""

import os
from collections.abc import Callable

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThread

from tests import chromium
from tests.client import connect

if not chromium.PATH:
    if os.environ.get("CHATBOX_REQUIRE_BROWSER"):
        raise RuntimeError(
            "Chromium is required for the browser tests (scripts/test installs it)"
        )
    pytestmark = pytest.mark.skip(reason="no chromium here; scripts/test installs it")


class Browser:
    """One Chromium, its pages, and every console error they show."""

    def __init__(self, playwright) -> None:
        self.browser = chromium.launch(playwright)
        self.errors: list[str] = []
        self.dialogs: list[str] = []

    def page(self, url: str, locale: str = "en-GB", **options):
        context = self.browser.new_context(locale=locale, **options)
        page = context.new_page()
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.goto(url)
        return page

    def join(self, url: str, name: str, **options):
        page = self.page(url, **options)
        page.fill("#name", name)
        page.press("#name", "Enter")
        page.wait_for_selector("#content:not([disabled])")
        return page


def in_browser(scenario: Callable[[Browser], None]) -> Deferred:
    """Run `scenario` with a fresh Chromium in a worker thread."""

    def run() -> None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = Browser(playwright)
            try:
                scenario(browser)
                assert not browser.errors, browser.errors
                assert not browser.dialogs, browser.dialogs
            finally:
                browser.browser.close()

    return deferToThread(run)


def in_reactor(function: Callable, *args):
    return blockingCallFromThread(reactor, function, *args)


def page_url(server) -> str:
    return f"http://127.0.0.1:{server.port}/"


def message_texts(page) -> list[str]:
    return page.locator("#message-list .message .text").all_inner_texts()


@ensureDeferred
async def test_two_people_chat_rename_and_leave(server):
    url = page_url(server)

    def scenario(browser: Browser) -> None:
        an = browser.join(url, "An")
        bo = browser.join(url, "Bo")
        an.wait_for_selector("text=Bo joined")
        assert an.inner_text("#online-count") == "2"

        bo.fill("#content", "xin chào An")
        bo.press("#content", "Enter")
        bo.wait_for_selector(".message.mine[data-state=sent]")
        an.wait_for_selector("#message-list .message >> text=xin chào An")

        bo.fill("#name", "Bảo")
        bo.click("#name-button")
        an.wait_for_selector("text=Bo is now Bảo")
        an.wait_for_function(
            "document.querySelector('#online-list').innerText.includes('Bảo')"
        )
        # The refusal reasons show next to the nickname field.
        an.fill("#name", "BẢO")
        an.click("#name-button")
        an.wait_for_selector("#name-error >> text=That nickname is taken.")

        bo.close()
        an.wait_for_selector("text=Bảo left")
        an.wait_for_function(
            "document.querySelector('#online-count').innerText === '1'"
        )

    await in_browser(scenario)


@ensureDeferred
async def test_reconnects_and_catches_up_without_duplicates(server):
    url = page_url(server)

    async def drop_everyone_then_post() -> None:
        for connection in list(server.factory.connections):
            if connection is not None:
                connection.transport.abortConnection()
        # A new connection posts while An is away.
        poster = await connect(server.url)
        await poster.register("Poster")
        for i in range(3):
            await poster.say(f"while you were away {i}")

    def scenario(browser: Browser) -> None:
        an = browser.join(url, "An")
        an.fill("#content", "before the drop")
        an.press("#content", "Enter")
        an.wait_for_selector(".message.mine[data-state=sent]")
        in_reactor(lambda: Deferred.fromCoroutine(drop_everyone_then_post()))
        an.wait_for_selector("text=while you were away 2", timeout=15000)
        an.wait_for_function("window.chatbox.state.myName === 'An'")
        texts = message_texts(an)
        assert texts == ["before the drop"] + [
            f"while you were away {i}" for i in range(3)
        ]
        ids = an.eval_on_selector_all(
            "#message-list .message", "els => els.map(e => e.dataset.id)"
        )
        assert len(ids) == len(set(ids))

    await in_browser(scenario)


@ensureDeferred
async def test_scrolling_up_loads_older_pages(server):
    url = page_url(server)
    filler = await server.user("Filler")
    for i in range(120):
        await filler.say(f"old message {i:03d}")

    def scenario(browser: Browser) -> None:
        an = browser.join(url, "An", viewport={"width": 900, "height": 600})
        an.wait_for_selector("text=old message 119")
        assert len(message_texts(an)) == 50  # the latest page only
        for expected in (100, 120):
            an.eval_on_selector("#messages", "box => { box.scrollTop = 0; }")
            count = "document.querySelectorAll('#message-list .message').length"
            an.wait_for_function(f"{count} === {expected}")
        an.wait_for_selector("#history-start:not([hidden])")
        texts = message_texts(an)
        assert texts == [f"old message {i:03d}" for i in range(120)]

    await in_browser(scenario)


@ensureDeferred
async def test_html_in_messages_and_names_stays_text(server):
    url = page_url(server)
    attack = '<img src=x onerror="alert(1)"><b>bold</b><script>alert(2)</script>'

    def scenario(browser: Browser) -> None:
        an = browser.join(url, "<i>An</i>")
        bo = browser.join(url, "Bo")
        an.fill("#content", attack)
        an.press("#content", "Enter")
        bo.wait_for_selector("#message-list .message .text")
        assert message_texts(bo) == [attack]
        assert (
            bo.locator(
                "#message-list img, #message-list b, #message-list script"
            ).count()
            == 0
        )
        assert "<i>An</i>" in bo.inner_text("#online-list")
        assert bo.locator("#online-list i").count() == 0

    await in_browser(scenario)


@ensureDeferred
async def test_keyboard_only_in_vietnamese_on_a_phone(server):
    url = page_url(server)

    def scenario(browser: Browser) -> None:
        page = browser.page(url, locale="vi-VN", viewport={"width": 375, "height": 700})
        assert page.inner_text("#name-button") == "Tham gia"
        page.keyboard.press("Tab")  # language select
        page.keyboard.press("Tab")  # connection button
        page.keyboard.press("Tab")  # nickname
        page.keyboard.type("Chi")
        page.keyboard.press("Enter")
        page.wait_for_selector("#content:not([disabled])")
        page.focus("#content")
        page.keyboard.type("Chào cả lớp")
        page.keyboard.press("Enter")
        page.wait_for_selector(".message.mine[data-state=sent] >> text=đã gửi")
        # Everything is on screen at phone width.
        for selector in ("#name", "#content", "#send", "#online-list"):
            box = page.locator(selector).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 375, selector
        page.select_option("#language", "en")
        assert page.inner_text("#send") == "Send"

    await in_browser(scenario)
