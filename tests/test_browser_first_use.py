"""What a new user's first session with the bundled client ran into, each
fixed and kept fixed: two tabs of one browser, 4,000 emoji, links with
brackets, counts before joining, finding a classmate, renaming from the
keyboard, the phone's online panel, look-alike avatars."""

import json

from pytest_twisted import ensureDeferred

from tests.chromium import (
    DESKTOP,
    PHONE,
    TOUCH_PHONE,
    Browser,
    await_in_reactor,
    in_browser,
    join,
    page_url,
    say,
    skip_without_chromium,
)

if skip := skip_without_chromium():
    pytestmark = skip

EMOJI = "\U0001f600"


@ensureDeferred
async def test_two_tabs_of_one_browser_are_two_people(server):
    """The README says: open a second tab to talk to yourself. Each tab
    rejoins as itself on reload; a new tab only offers the last name."""

    def scenario(browser: Browser) -> None:
        first = browser.join(page_url(server), "Tab One", viewport=DESKTOP)
        second = first.context.new_page()
        second.goto(page_url(server))
        second.wait_for_function("window.chatbox.state.onlineCount === 1")
        assert second.input_value("#name") == "Tab One"  # offered, not taken
        assert not second.evaluate("window.chatbox.state.registered")
        second.fill("#name", "Tab Two")
        second.press("#name", "Enter")
        second.wait_for_selector("#content:not([disabled])")
        first.reload()
        first.wait_for_function("window.chatbox.state.registered")
        assert first.evaluate("window.chatbox.state.myName") == "Tab One"
        second.reload()
        second.wait_for_function("window.chatbox.state.registered")
        assert second.evaluate("window.chatbox.state.myName") == "Tab Two"

    await in_browser(scenario)


@ensureDeferred
async def test_four_thousand_emoji_are_one_message_and_no_more(server):
    """The server counts characters (code points); the message box counted
    UTF-16 units and cut 4,000 emoji to 2,000."""

    def scenario(browser: Browser) -> None:
        page = browser.join(page_url(server), "An", viewport=DESKTOP)
        page.fill("#content", EMOJI * 4001)
        assert page.inner_text("#counter") == "4001 / 4000"
        page.click("#send")
        assert "4,000" in page.inner_text("#counter")  # why it was not sent
        assert page.locator(".message.mine").count() == 0
        page.fill("#content", EMOJI * 4000)
        assert page.inner_text("#counter") == "4000 / 4000"
        page.click("#send")
        page.wait_for_selector(".message.mine[data-id]")

    await in_browser(scenario)
    history = (await (await server.user("Reader")).get())["data"]["message"]
    assert [m["content"] for m in history] == [EMOJI * 4000]


@ensureDeferred
async def test_links_keep_their_own_brackets(server):
    bo = await server.user("Bo")
    text = (
        "read https://en.wikipedia.org/wiki/Python_(language) "
        "(or https://example.org/a), then https://example.org/b."
    )

    def scenario(browser: Browser) -> None:
        page = browser.join(page_url(server), "An", viewport=DESKTOP)
        await_in_reactor(lambda: bo.say(text))
        page.wait_for_selector(".message .text a")
        hrefs = page.eval_on_selector_all(
            ".message .text a", "as => as.map(a => a.href)"
        )
        assert hrefs == [
            "https://en.wikipedia.org/wiki/Python_(language)",
            "https://example.org/a",
            "https://example.org/b",
        ]
        assert page.inner_text(".message .text") == text

    await in_browser(scenario)


@ensureDeferred
async def test_counts_before_joining_and_a_sorted_list_after(server):
    for name in ("Zoe", "Đức", "an", "Bình"):
        await server.user(name)

    def scenario(browser: Browser) -> None:
        page = browser.page(page_url(server), viewport=PHONE, locale="vi-VN")
        page.wait_for_function("window.chatbox.state.onlineCount === 4")
        # The header's count agrees with the welcome line.
        assert page.inner_text("#online-count-short") == "4"
        join(page, "Minh")
        page.wait_for_function(
            "document.querySelectorAll('#online-list li').length === 5"
        )
        people = page.locator("#online-list .person").all_inner_texts()
        assert people == ["Minh (bạn)", "an", "Bình", "Đức", "Zoe"]

    await in_browser(scenario)


@ensureDeferred
async def test_renaming_from_the_keyboard_returns_to_the_message_box(server):
    def scenario(browser: Browser) -> None:
        page = browser.join(page_url(server), "An", viewport=DESKTOP)
        page.click("#menu-button")
        page.click("#rename-open")
        page.fill("#rename", "Anh")
        page.press("#rename", "Enter")
        page.wait_for_selector("text=You are now Anh")
        assert page.locator("#menu").is_hidden()
        assert page.evaluate("document.activeElement.id") == "content"

    await in_browser(scenario)


@ensureDeferred
async def test_the_phones_online_panel_closes_as_the_menu_does(server):
    def scenario(browser: Browser) -> None:
        page = browser.join(page_url(server), "Chi", **TOUCH_PHONE)
        for close in ("Escape", "outside"):
            page.click("#online-toggle")
            assert page.locator("#online-list").is_visible()
            if close == "Escape":
                page.keyboard.press("Escape")
            else:
                page.click("#messages", position={"x": 20, "y": 20})
            assert page.locator("#online-list").is_hidden(), close
            assert page.get_attribute("#online-toggle", "aria-expanded") == "false"

    await in_browser(scenario)


@ensureDeferred
async def test_people_with_similar_names_get_different_colours(server):
    names = [f"Student {i}" for i in range(6)]
    for name in names:
        await server.user(name)

    def scenario(browser: Browser) -> None:
        page = browser.join(page_url(server), "Teacher", viewport=DESKTOP)
        page.wait_for_function(
            "document.querySelectorAll('#online-list li').length === 7"
        )
        hues = page.eval_on_selector_all(
            "#online-list .avatar",
            "els => els.map(e => Number(e.style.getPropertyValue('--hue')))",
        )
        students = hues[1:]
        # Six names one character apart: at least four visibly different
        # colours (30 degrees or more apart on the wheel).
        distinct = {hue // 30 for hue in students}
        assert len(distinct) >= 4, json.dumps(students)

    await in_browser(scenario)


@ensureDeferred
async def test_the_last_message_stays_in_view_when_the_phones_status_row_appears(
    server,
):
    def scenario(browser: Browser) -> None:
        page = browser.join(page_url(server), "Chi", viewport=PHONE)
        for i in range(30):
            say(page, f"line {i}")
        page.click("#menu-button")
        page.click("#connection")  # Disconnect: a second header row appears
        page.keyboard.press("Escape")
        page.wait_for_function(
            "document.querySelector('#status').dataset.kind === 'off'"
        )
        page.wait_for_function(
            "(() => { const box = document.querySelector('#messages');"
            " return box.scrollHeight - box.scrollTop - box.clientHeight < 2; })()"
        )
        last = page.locator(".message").last.bounding_box()
        box = page.locator("#messages").bounding_box()
        assert last["y"] + last["height"] <= box["y"] + box["height"] + 1

    await in_browser(scenario)
