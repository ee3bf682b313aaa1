"""The bundled client at real size: a 10,000-message history of the longest
messages and nicknames in a 4-byte script, 1,000 people online, and 300 of
them leaving and 300 joining at once (a class reloading after a Wi-Fi blip).

The class is bench/load.py's crowd, a child process, so the test's own
reactor serves rather than plays 1,000 clients. What each step took is
printed (pytest -s shows it); nothing here is timed.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

from pytest_twisted import ensureDeferred

from tests.chromium import Browser, in_browser, page_url, skip_without_chromium
from tests.server import start_server
from tests.test_real_size import WIDE, prefill

pytestmark = skip_without_chromium() or []

LOAD = str(Path(__file__).resolve().parent.parent / "bench" / "load.py")
PEOPLE = 1_000
CHURN = 300


class Crowd:
    def __init__(self, url: str, clients: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, LOAD, url, "--mode", "crowd", "--clients", str(clients)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready()

    def ready(self) -> int:
        line = self.process.stdout.readline()
        assert line, "the crowd ended early"
        return json.loads(line)["ready"]

    def churn(self, count: int) -> None:
        self.process.stdin.write(f"churn {count}\n")
        self.process.stdin.flush()
        assert self.ready() == PEOPLE

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def count_is(page, selector: str, count: int) -> None:
    page.wait_for_function(
        f"document.querySelectorAll({json.dumps(selector)}).length === {count}"
    )


@ensureDeferred
async def test_a_big_class_with_a_long_history(tmp_path):
    data = tmp_path / "data.json"
    prefill(data, 10_000, content=WIDE * 4000, name=WIDE * 100)
    server = await start_server(data, "--max-connections-per-ip=0")
    url = page_url(server)

    def scenario(browser: Browser) -> None:
        started = time.monotonic()
        crowd = Crowd(server.url, PEOPLE)
        gathered = time.monotonic() - started
        try:
            started = time.monotonic()
            page = browser.page(url, viewport={"width": 1280, "height": 800})
            page.wait_for_function(
                f"document.body.textContent.includes('{PEOPLE}')"
            )  # the welcome line's count, before joining
            page.fill("#name", "Teacher")
            page.press("#name", "Enter")
            count_is(page, "#message-list .message", 50)
            count_is(page, "#online-list li", PEOPLE + 1)
            joined = time.monotonic() - started
            assert page.inner_text("#online-count") == str(PEOPLE + 1)
            # Every shown message is whole: 4,000 four-byte characters.
            texts = page.locator("#message-list .message .text").all_inner_texts()
            assert all(text == WIDE * 4000 for text in texts)

            started = time.monotonic()
            crowd.churn(CHURN)
            churned = time.monotonic() - started
            page.wait_for_function(
                "document.querySelector('#online-list').textContent"
                f".includes('back{CHURN - 1:04d}')"
            )
            count_is(page, "#online-list li", PEOPLE + 1)
            settled = time.monotonic() - started
            names = page.locator("#online-list li").all_inner_texts()
            assert not any(name.endswith("student0000") for name in names)
            # 600 joins and leaves fold into a line for each run of them.
            notices = page.locator("#message-list .notice").all_inner_texts()
            assert notices[-2:] == [
                f"student0000, student0001 and {CHURN - 2} others left",
                f"back0000, back0001 and {CHURN - 2} others joined",
            ], notices[-3:]

            # Older pages still load at the top.
            page.eval_on_selector("#messages", "box => { box.scrollTop = 0; }")
            count_is(page, "#message-list .message", 100)
            print(
                f"\n{PEOPLE} people joined in {gathered:.2f} s; the page joined "
                f"and showed them and a 10,000-message history in {joined:.2f} s; "
                f"{CHURN} leaving and {CHURN} joining took {churned:.2f} s on the "
                f"server's side, {settled:.2f} s until the page's list was right"
            )
        finally:
            crowd.close()

    try:
        await in_browser(scenario)
    finally:
        await server.stop()
