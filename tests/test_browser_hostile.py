"""The bundled client against hostile classmates and a broken server: what
an attacker of the client tried, each kept harmless. Text never becomes
markup anywhere a nickname or message is shown; the longest names and
strangest text stay inside the page; a nickname cannot pass for the page's
own words; a bad history entry costs that entry, never the page."""

import json
import re
from typing import Any

from pytest_twisted import ensureDeferred

from tests.chromium import (
    DESKTOP,
    PHONE,
    Browser,
    await_in_reactor,
    in_browser,
    in_reactor,
    page_url,
    skip_without_chromium,
)

if skip := skip_without_chromium():
    pytestmark = skip

MARKUP = "<i>x</i><img src=x onerror=alert(1)>"
# 100 characters the server accepts, four bytes each and no place to break.
LONGEST = "\U0001d400" * 100


def overflow(page: Any) -> int:
    """Pixels the page is wider than its window (0: nothing off screen)."""
    return page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )


@ensureDeferred
async def test_a_nickname_is_text_wherever_it_is_shown(server):
    """Joining after the viewer, typing, posting, being mentioned, renaming
    and leaving: the name is shown in the online list, notices, the typing
    line, message authors and the mention; never as markup."""

    def scenario(browser: Browser) -> None:
        viewer = browser.join(page_url(server), "Viewer", viewport=DESKTOP)
        attacker = await_in_reactor(lambda: server.user(MARKUP))
        viewer.wait_for_function(
            "document.querySelector('#message-list').textContent.includes('<i>x</i>')"
        )
        in_reactor(attacker.send_json, {"type": "typing"})
        viewer.wait_for_selector("#typing bdi")
        await_in_reactor(lambda: attacker.say(f"hi @Viewer from {MARKUP}"))
        viewer.wait_for_selector(".message .who")
        await_in_reactor(lambda: attacker.register(MARKUP + "2"))
        in_reactor(attacker.sendClose, 1000)
        viewer.wait_for_function(
            "document.querySelectorAll('#message-list .notice').length === 3"
        )
        shown = (
            "#message-list :is(i, img), #typing :is(i, img), #online-list :is(i, img)"
        )
        assert viewer.locator(shown).count() == 0
        notices = viewer.locator("#message-list .notice").all_inner_texts()
        assert notices == [
            f"{MARKUP} joined",
            f"{MARKUP} is now {MARKUP}2",
            f"{MARKUP}2 left",
        ]
        assert viewer.inner_text(".message .who") == MARKUP

    await in_browser(scenario)


@ensureDeferred
async def test_the_longest_nickname_and_stacked_marks_stay_in_the_page(server):
    zalgo = "a" + "\u0301\u0300\u0302\u0303" * 50

    def scenario(browser: Browser) -> None:
        pages = [
            browser.join(page_url(server), "Viewer", viewport=DESKTOP),
            browser.join(page_url(server), "Viewer2", viewport=PHONE),
        ]
        attacker = await_in_reactor(lambda: server.user(LONGEST))
        await_in_reactor(lambda: attacker.say(zalgo))
        in_reactor(attacker.send_json, {"type": "typing"})  # after: a message clears it
        for page in pages:
            page.wait_for_selector("#typing bdi")
            page.wait_for_selector(".message .text")
            assert overflow(page) == 0
            # The marks are drawn inside their own bubble, not over others.
            clip = page.eval_on_selector(
                ".message .bubble", "b => getComputedStyle(b).overflow"
            )
            assert clip == "hidden"
        in_reactor(attacker.sendClose, 1000)
        for page in pages:
            page.wait_for_selector(".notice >> text=left")
            assert overflow(page) == 0
        # The online list is still on screen beside the messages.
        box = pages[0].locator("#online-list").bounding_box()
        assert box["x"] + box["width"] <= DESKTOP["width"]

    await in_browser(scenario)


@ensureDeferred
async def test_nobody_else_can_look_like_you_or_like_a_link_they_are_not(server):
    impostor = await server.user("Viewer (you)")

    def scenario(browser: Browser) -> None:
        viewer = browser.join(page_url(server), "Viewer", viewport=DESKTOP)
        viewer.wait_for_function(
            "document.querySelectorAll('#online-list li').length === 2"
        )
        # Only the real one carries the badge, an element of its own.
        badges = viewer.locator("#online-list .you")
        assert badges.count() == 1
        assert viewer.inner_text("#online-list .me .person") == "Viewer (you)"
        await_in_reactor(
            lambda: impostor.say("photo: https://evil.example/\u202egpj.exe")
        )
        viewer.wait_for_selector(".message .text a")
        shown = viewer.inner_text(".message .text a")
        assert "\u202e" not in shown and shown.endswith("%E2%80%AEgpj.exe")

    await in_browser(scenario)


class Corrupting:
    """Between the page and the server: spoils the first history entry of
    each `get` reply (a time no Date can hold, a null content)."""

    def __init__(self, page: Any) -> None:
        page.route_web_socket(re.compile(".*"), self.route)

    def route(self, ws: Any) -> None:
        server = ws.connect_to_server()
        server.on_message(lambda message: ws.send(self.spoil(message)))

    @staticmethod
    def spoil(message: str) -> str:
        reply = json.loads(message)
        if reply.get("type") == "get" and reply.get("status"):
            entries = reply["data"]["message"]
            if len(entries) >= 2:
                entries[0]["time"] = 1e20
                entries[1]["content"] = None
            return json.dumps(reply)
        return message


@ensureDeferred
async def test_a_broken_history_entry_costs_that_entry_not_the_page(server):
    bo = await server.user("Bo")
    for text in ("one", "two", "three"):
        await bo.say(text)

    def scenario(browser: Browser) -> None:
        page = browser.page(page_url(server), viewport=DESKTOP, setup=Corrupting)
        page.fill("#name", "An")
        page.press("#name", "Enter")
        page.wait_for_selector(".message >> text=three")
        texts = page.locator(".message .text").all_inner_texts()
        assert texts == ["one", "", "three"]
        # The first one's time came from its v2 timestamp instead.
        assert page.locator(".message .when").first.inner_text() != ""

    await in_browser(scenario)
