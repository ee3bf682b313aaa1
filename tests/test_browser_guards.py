"""Behaviours of the bundled client that a mutation tester could break with
every other browser test still green: the Retry that keeps its send_id, the
language switch that reaches every string on screen, grouping by minute and
not across notices, the typing line's lifetime, the "N new messages"
button, and the manual dark theme. Each test here went red against the
mutation its docstring names.
"""

import json
import re
import time
from pathlib import Path
from typing import Any

from pytest_twisted import ensureDeferred

from tests.chromium import (
    DESKTOP,
    LOCALES,
    Browser,
    at_bottom,
    await_in_reactor,
    in_browser,
    in_reactor,
    join,
    page_url,
    seeded,
    skip_without_chromium,
)
from tests.server import start_server

if skip := skip_without_chromium():
    pytestmark = skip


# Every frame the page sends, as it hands it to the WebSocket.
RECORD_SENT = """
window.sent = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  window.sent.push(String(data));
  return send.call(this, data);
};
"""


class SwallowFirstSendReply:
    """Keeps the first `send` reply from the page: the message stays in
    flight until the page gives up on the connection (Disconnect)."""

    def __init__(self, page: Any) -> None:
        self.swallowed = False
        page.route_web_socket(re.compile(".*"), self.route)

    def route(self, ws: Any) -> None:
        server = ws.connect_to_server()
        server.on_message(lambda message: self.forward(ws, message))

    def forward(self, ws: Any, message: str) -> None:
        if not self.swallowed and json.loads(message).get("type") == "send":
            self.swallowed = True
            return
        ws.send(message)


class SameTime:
    """Stamps every live message with one time, so they share a minute
    whenever the real clock says it."""

    def __init__(self, page: Any, millis: int) -> None:
        self.millis = millis
        page.route_web_socket(re.compile(".*"), self.route)

    def route(self, ws: Any) -> None:
        server = ws.connect_to_server()
        server.on_message(lambda message: ws.send(self.restamp(message)))

    def restamp(self, message: str) -> str:
        event = json.loads(message)
        if event.get("type") == "receive" and event.get("datatype") == "message":
            event["time"] = self.millis
        return json.dumps(event)


def grouped(page: Any) -> list[bool]:
    return page.eval_on_selector_all(
        "#message-list .message", "els => els.map(e => e.classList.contains('cont'))"
    )


def typing(page: Any) -> str:
    return page.inner_text("#typing")


def send_unanswered(page: Any, content: str) -> None:
    """Send `content` while the reply is swallowed: it stays in flight."""
    page.fill("#content", content)
    page.click("#send")


def disconnect(page: Any) -> None:
    """The message in flight is shown as not sent, with Retry."""
    page.click("#connection")
    page.wait_for_selector(".message.mine .retry")


@ensureDeferred
async def test_retry_resends_with_the_first_attempts_send_id(server):
    """Mutation: Retry makes a new send_id (the server would store it twice)."""

    def scenario(browser: Browser) -> None:
        an = browser.page(
            page_url(server),
            viewport=DESKTOP,
            setup=SwallowFirstSendReply,
            init=RECORD_SENT,
        )
        join(an, "An")
        send_unanswered(an, "lost in the post")
        disconnect(an)
        an.click(".message.mine .retry")
        an.wait_for_selector(".message.mine[data-state=sent] >> text=lost in the post")
        sends = [json.loads(f) for f in an.evaluate("window.sent")]
        sends = [f for f in sends if f.get("type") == "send"]
        assert len(sends) == 2, sends
        assert sends[0]["send_id"] == sends[1]["send_id"], sends

    await in_browser(scenario)


TEXT = {
    "en": {
        "connect": "Connect",
        "hint": "Enter to send, Shift+Enter for a new line",
        "too_long": "Messages are at most 4,000 characters.",
        "unread": "1 new message ↓",
        "welcome": "Welcome! 1 person is online.",
        "retry": "Retry",
        "failed": "not sent: connection lost",
    },
    "vi": {
        "connect": "Kết nối",
        "hint": "Enter để gửi, Shift+Enter để xuống dòng",
        "too_long": "Tin nhắn dài tối đa 4.000 ký tự.",
        "unread": "1 tin nhắn mới ↓",
        "welcome": "Chào mừng! Có 1 người đang trực tuyến.",
        "retry": "Gửi lại",
        "failed": "chưa gửi được: mất kết nối",
    },
}

# The times' hover titles, as the language's locale writes them.
TITLES_AS_IN = """locale => Array.from(document.querySelectorAll("#message-list .when"))
  .map(w => [w.title, new Date(Number(w.closest(".message").dataset.time))
    .toLocaleString(locale, {weekday: "long", day: "numeric", month: "long",
      year: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit"})])"""


def check_language(page: Any, lang: str, other: str) -> None:
    words = TEXT[lang]
    titles = page.evaluate(TITLES_AS_IN, LOCALES[lang])
    wrong = [(shown, wanted) for shown, wanted in titles if shown != wanted]
    assert titles, "no times on screen"
    assert not wrong, f"{len(wrong)} titles, first (shown, wanted): {wrong[0]}"
    assert page.inner_text("#connection") == words["connect"]
    counter = page.inner_text("#counter")
    assert counter.startswith("4100 / 4000"), counter
    assert TEXT[other]["too_long"] not in counter, counter
    assert page.inner_text("#composer-hint") == words["hint"]
    assert page.locator("#unread").is_visible()
    assert page.inner_text("#unread") == words["unread"]
    # Hidden once joined, but shown again should the nickname be refused.
    assert page.text_content("#welcome") == words["welcome"]
    assert page.inner_text(".message.mine .retry") == words["retry"]
    assert page.inner_text(".message.mine .state") == words["failed"]


def switch_language(page: Any, lang: str) -> None:
    page.select_option("#language", lang)


@ensureDeferred
async def test_switching_language_translates_every_string_on_screen(tmp_path: Path):
    """Mutations, one at a time: setLanguage (or the render function it
    calls) leaves the times' titles, the Connect button, the counter, the
    hint, the unread button, the welcome line, Retry or "not sent" in the
    old language."""
    yesterday = int(time.time()) - 86400
    data = seeded(
        tmp_path, [("Linh", f"earlier {i}", yesterday + 60 * i) for i in range(40)]
    )
    server = await start_server(data)
    try:
        bo = await server.user("Bo")

        def scenario(browser: Browser) -> None:
            an = browser.page(
                page_url(server), viewport=DESKTOP, setup=SwallowFirstSendReply
            )
            an.wait_for_selector(f"#welcome >> text={TEXT['en']['welcome']}")
            join(an, "An")
            an.wait_for_selector("#message-list >> text=earlier 39")
            send_unanswered(an, "lost in the post")
            an.eval_on_selector("#messages", "box => { box.scrollTop = 0; }")
            await_in_reactor(lambda: bo.say("are you there?"))
            an.wait_for_selector("#unread >> text=1 new message")
            disconnect(an)
            an.fill("#content", "x" * 4100)
            an.press("#content", "Enter")
            check_language(an, "en", "vi")
            switch_language(an, "vi")
            check_language(an, "vi", "en")
            an.press("#content", "Enter")  # the refusal, now in Vietnamese
            assert TEXT["vi"]["too_long"] in an.inner_text("#counter")
            switch_language(an, "en")
            check_language(an, "en", "vi")

        await in_browser(scenario)
    finally:
        await server.stop()


@ensureDeferred
async def test_one_persons_messages_group_within_a_minute_only(tmp_path: Path):
    """Mutation: messages of one person group whatever their minutes."""
    minute = (int(time.time()) - 86400) // 60 * 60
    data = seeded(
        tmp_path,
        [
            ("Linh", "first", minute + 5),
            ("Linh", "same minute", minute + 20),
            ("Linh", "65 s later", minute + 85),
        ],
    )
    server = await start_server(data)
    try:

        def scenario(browser: Browser) -> None:
            an = browser.join(page_url(server), "An", viewport=DESKTOP)
            an.wait_for_selector("#message-list >> text=65 s later")
            assert grouped(an) == [False, True, False]

        await in_browser(scenario)
    finally:
        await server.stop()


@ensureDeferred
async def test_grouping_stops_at_a_join_notice(server):
    """Mutation: decorate() groups across notices (ignores them)."""
    bo = await server.user("Bo")
    millis = (int(time.time()) - 86400) // 60 * 60_000 + 10_000

    def scenario(browser: Browser) -> None:
        an = browser.page(
            page_url(server), viewport=DESKTOP, setup=lambda p: SameTime(p, millis)
        )
        join(an, "An")
        await_in_reactor(lambda: bo.say("one"))
        an.wait_for_selector("#message-list >> text=one")
        await_in_reactor(lambda: server.user("Chi"))
        an.wait_for_selector("#message-list .notice >> text=Chi joined")
        await_in_reactor(lambda: bo.say("two"))
        await_in_reactor(lambda: bo.say("three"))
        an.wait_for_selector("#message-list >> text=three")
        assert grouped(an) == [False, False, True]

    await in_browser(scenario)


@ensureDeferred
async def test_the_typing_line_expires_and_clears_on_leave_and_rename(server):
    """Mutations: the line never expires; a leave does not clear it; a
    rename does not clear it."""
    bo = await server.user("Bo")
    chi = await server.user("Chi")
    dan = await server.user("Dan")

    def scenario(browser: Browser) -> None:
        an = browser.page(
            page_url(server), viewport=DESKTOP, setup=lambda p: p.clock.install()
        )
        # Time moves only when the test says: nothing expires by itself.
        an.clock.pause_at(an.evaluate("Date.now()") + 1000)
        join(an, "An")
        in_reactor(bo.send_json, {"type": "typing"})
        an.wait_for_selector("#typing >> text=Bo is typing…")
        an.clock.run_for(5000)
        assert typing(an) == "Bo is typing…"
        an.clock.run_for(1500)
        assert typing(an) == ""

        in_reactor(chi.send_json, {"type": "typing"})
        an.wait_for_selector("#typing >> text=Chi is typing…")
        in_reactor(chi.abort)
        an.wait_for_selector("#message-list .notice >> text=Chi left")
        assert typing(an) == ""

        in_reactor(dan.send_json, {"type": "typing"})
        an.wait_for_selector("#typing >> text=Dan is typing…")
        await_in_reactor(lambda: dan.register("Dung"))
        an.wait_for_selector("#message-list .notice >> text=Dan is now Dung")
        assert typing(an) == ""

    await in_browser(scenario)


@ensureDeferred
async def test_scrolled_up_a_new_message_shows_the_button_that_scrolls_down(server):
    """Mutation: the "N new messages" button never shows."""
    bo = await server.user("Bo")
    for i in range(40):
        await bo.say(f"earlier {i}")

    def scenario(browser: Browser) -> None:
        an = browser.join(page_url(server), "An", viewport=DESKTOP)
        an.wait_for_selector("#message-list >> text=earlier 39")
        an.eval_on_selector("#messages", "box => { box.scrollTop = 0; }")
        await_in_reactor(lambda: bo.say("something new"))
        an.wait_for_selector("#message-list >> text=something new")
        assert an.locator("#unread").is_visible()
        assert an.inner_text("#unread") == "1 new message ↓"
        assert not at_bottom(an)
        an.click("#unread")
        assert at_bottom(an)
        assert an.locator("#unread").is_hidden()

    await in_browser(scenario)
