"""How this project starts Debian's Chromium, for tests and docs/screenshot.py,
and the helpers every browser test shares (tests/test_browser*.py).

Headless, no sandbox (CI runs as root), and none of Chromium's background
traffic: on a machine whose network reaches only package registries, those
connections are refused by the dozen at every start.

The browser tests run the server in the test reactor and Playwright in a
worker thread (`in_browser`); steps that need the server cross back into
the reactor (`in_reactor`, `await_in_reactor`).
"""

import json
import os
import shutil
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThread

PATH = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# A phone as Playwright emulates one: its size, a touch screen, mobile.
TOUCH_PHONE = {"viewport": PHONE, "has_touch": True, "is_mobile": True}
LOCALES = {"en": "en-GB", "vi": "vi-VN"}
# Issue 12's two sizes, each in one of the two languages.
SIZES = pytest.mark.parametrize(
    ("viewport", "lang"),
    [(DESKTOP, "en"), (PHONE, "vi")],
    ids=["desktop-en", "phone-vi"],
)


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=PATH, args=ARGS)


def skip_without_chromium() -> pytest.MarkDecorator | None:
    """The browser test modules' pytestmark: skip here, fail where required."""
    if PATH:
        return None
    if os.environ.get("CHATBOX_REQUIRE_BROWSER"):
        raise RuntimeError(
            "Chromium is required for the browser tests (scripts/test installs it)"
        )
    return pytest.mark.skip(reason="no chromium here; scripts/test installs it")


class Browser:
    """One Chromium, its pages, and every console error they show."""

    def __init__(self, playwright: Any) -> None:
        self.browser = launch(playwright)
        self.errors: list[str] = []
        self.dialogs: list[str] = []

    def page(
        self,
        url: str,
        locale: str = "en-GB",
        init: str | None = None,
        setup: Callable[[Any], None] | None = None,
        **options,
    ) -> Any:
        """A page in its own context (own storage); `init` runs before the
        page's scripts (a fake Math.random, a recording Notification),
        `setup(page)` before it loads (a fake clock, a WebSocket route)."""
        context = self.browser.new_context(locale=locale, **options)
        page = context.new_page()
        if setup:
            setup(page)
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        if init:
            page.add_init_script(init)
        page.goto(url)
        return page

    def join(self, url: str, name: str, **options) -> Any:
        page = self.page(url, **options)
        join(page, name)
        return page


def join(page: Any, name: str) -> None:
    page.fill("#name", name)
    page.press("#name", "Enter")
    page.wait_for_selector("#content:not([disabled])")


def say(page: Any, text: str) -> None:
    """Post from a page and wait until the server has stored it."""
    before = page.locator(".message.mine[data-id]").count()
    page.fill("#content", text)
    page.click("#send")
    page.wait_for_function(
        f"document.querySelectorAll('.message.mine[data-id]').length > {before}"
    )


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


def in_reactor(function: Callable, *args: Any) -> Any:
    return blockingCallFromThread(reactor, function, *args)


def await_in_reactor(coroutine: Callable[[], Coroutine]) -> Any:
    """Run an async step (a test client's request) in the reactor; wait for it."""
    return blockingCallFromThread(reactor, lambda: Deferred.fromCoroutine(coroutine()))


def page_url(server: Any) -> str:
    return f"http://127.0.0.1:{server.port}/"


def message_texts(page: Any) -> list[str]:
    return page.locator("#message-list .message .text").all_inner_texts()


def at_bottom(page: Any) -> bool:
    return page.eval_on_selector(
        "#messages", "b => b.scrollHeight - b.scrollTop - b.clientHeight < 2"
    )


def seeded(tmp_path: Path, entries: list[tuple[str, str, int]]) -> Path:
    """A data.json holding (name, content, epoch second) entries, as the
    server writes them: so the test, not the clock, says which day and
    minute each message is in."""
    data = tmp_path / "data.json"
    data.write_text(
        json.dumps(
            [
                {
                    "id": i,
                    "name": name,
                    "content": content,
                    "timestamp": time.strftime(
                        "%d/%m/%Y, %H:%M:%S", time.localtime(second)
                    ),
                    "time": second * 1000,
                }
                for i, (name, content, second) in enumerate(entries, 1)
            ]
        )
    )
    return data


# Desktop notifications, recorded: headless Chromium shows none.
RECORD_NOTIFICATIONS = """
window.notified = [];
window.Notification = class extends window.Notification {
  constructor(title, options) { super(title, options); window.notified.push(title); }
};
"""


def set_hidden(page: Any, hidden: bool) -> None:
    """Headless pages are always visible: say otherwise, as a background tab would."""
    page.evaluate(
        """hidden => {
          const get = () => hidden;
          Object.defineProperty(document, "hidden", {configurable: true, get});
          document.dispatchEvent(new Event("visibilitychange"));
        }""",
        hidden,
    )


def serious(page: Any) -> list[str]:
    """An axe-core audit's serious and critical findings (axe is imported
    here: docs/screenshot.py uses this module without it)."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
