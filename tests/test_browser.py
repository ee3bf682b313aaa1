"""The bundled browser client, in a real headless Chromium (Debian's).

The server runs in the test reactor; Playwright drives Chromium from a
worker thread, and steps that need the server (dropping every socket,
posting as another user) cross back into the reactor.
"""

from pytest_twisted import ensureDeferred
from twisted.internet.defer import Deferred

from tests.chromium import (
    Browser,
    in_browser,
    in_reactor,
    message_texts,
    page_url,
    skip_without_chromium,
)
from tests.client import connect

if skip := skip_without_chromium():
    pytestmark = skip


def rename(page, name: str) -> None:
    page.click("#menu-button")
    page.click("#rename-open")
    page.fill("#rename", name)
    page.press("#rename", "Enter")


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

        # Renaming lives in the menu; the renamer is told too.
        rename(bo, "Bảo")
        an.wait_for_selector("text=Bo is now Bảo")
        bo.wait_for_selector("#message-list .notice >> text=You are now Bảo")
        an.wait_for_function(
            "document.querySelector('#online-list').innerText.includes('Bảo')"
        )
        # The refusal reasons show next to the nickname field.
        rename(an, "BẢO")
        an.wait_for_selector("#rename-error >> text=That nickname is taken.")

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
        page.keyboard.press("Tab")  # online list toggle
        page.keyboard.press("Tab")  # menu (language, connection, theme)
        page.keyboard.press("Tab")  # nickname
        page.keyboard.type("Chi")
        page.keyboard.press("Enter")
        page.wait_for_selector("#content:not([disabled])")
        page.focus("#content")
        page.keyboard.type("Chào cả lớp")
        page.keyboard.press("Enter")
        page.wait_for_selector(".message.mine[data-state=sent] >> text=đã gửi")
        # Everything is on screen at phone width (the online list on demand).
        page.click("#online-toggle")
        for selector in ("#content", "#send", "#online-list"):
            box = page.locator(selector).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 375, selector
        page.click("#menu-button")
        page.select_option("#language", "en")
        assert page.inner_text("#send") == "Send"

    await in_browser(scenario)
