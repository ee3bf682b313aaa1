"""Regenerate the README's screenshots of the bundled client: a real server,
a class chatting in Vietnamese and English (last days' homework, today's
lab, a mention, links, someone typing), seen by An at desktop and phone
size, light and dark:

    docs/screenshot-desktop-light.png   docs/screenshot-desktop-dark.png
    docs/screenshot-phone-light.png     docs/screenshot-phone-dark.png

.venv/bin/python docs/screenshot.py
"""

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests import chromium  # noqa: E402  (one place knows how to start it)

# Already in the history: (days ago, minutes after 16:00, who, what).
EARLIER = [
    (3, 0, "Cô Hạnh", "Chào cả lớp, đây là kênh chat của môn Mạng máy tính."),
    (3, 1, "Tuấn", "Dạ em chào cô ạ!"),
    (1, 2, "Cô Hạnh", "Bài tập tuần này: đọc chương 3 và làm bài 1–5 nhé."),
    (1, 2, "Cô Hạnh", "Slides: https://example.edu/networks/week-3"),
    (1, 11, "Tuấn", "Dạ em cảm ơn cô!"),
]
# Today, posted live.
TODAY = [
    ("Linh", "Hi all! Is everyone coming to the lab session?"),
    ("Minh", "Yes — setting up the projector now."),
    ("Linh", "@An can you bring the extra HDMI cable?"),
    ("An", "Sure, on my way! 5 minutes."),
    ("Minh", "Chào cả lớp! Nhớ mang laptop nhé."),
    ("Linh", "Lab sheet: https://example.edu/lab/websockets"),
    ("Linh", "We start with the echo server, then the chat."),
]
SHOTS = [
    ("desktop", chromium.DESKTOP, "en"),
    ("phone", chromium.PHONE, "vi"),
]


def history(workdir: Path) -> None:
    """The earlier messages, written as the server writes them."""
    now = time.localtime()
    entries = []
    for i, (days, minute, name, content) in enumerate(EARLIER, 1):
        four_pm = time.mktime((*now[:2], now[2] - days, 16, 0, 0, 0, 0, -1))
        second = int(four_pm) + minute * 60 + i
        stamp = time.strftime("%d/%m/%Y, %H:%M:%S", time.localtime(second))
        entries.append({"id": i, "name": name, "content": content, "timestamp": stamp})
    (workdir / "data.json").write_text(json.dumps(entries, ensure_ascii=False))


def start_server(workdir: Path) -> tuple[subprocess.Popen, str]:
    twistd = str(Path(sys.executable).parent / "twistd")
    server = subprocess.Popen(
        [
            twistd,
            "-n",
            "--pidfile=",
            "chatbox",
            "--port=tcp:0:interface=127.0.0.1",
            # A whole class from one address, typing hints included.
            "--ip-send-rate=0",
        ],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in server.stdout:
        match = re.search(r"listening on ws://[\d.]+:(\d+)", line)
        if match:
            return server, f"http://127.0.0.1:{match.group(1)}/"
    raise RuntimeError("chatbox did not start")


def join(browser: Any, url: str, name: str) -> Any:
    page = browser.new_page(locale="en-GB", viewport=chromium.DESKTOP)
    page.goto(url)
    chromium.join(page, name)
    return page


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="chatbox-shot-"))
    history(workdir)
    server, url = start_server(workdir)
    try:
        with sync_playwright() as p:
            browser = chromium.launch(p)
            pages = {name: join(browser, url, name) for name in ("Linh", "Minh", "An")}
            for name, text in TODAY:
                chromium.say(pages[name], text)
            an = pages["An"]
            an.wait_for_selector("text=We start with the echo server")
            for size, viewport, lang in SHOTS:
                an.set_viewport_size(viewport)
                an.evaluate(
                    "lang => { const s = document.querySelector('#language');"
                    " s.value = lang; s.dispatchEvent(new Event('change')); }",
                    lang,
                )
                for scheme in ("light", "dark"):
                    an.emulate_media(color_scheme=scheme)
                    # Someone typing, shown for 6 s after each hint; the
                    # server passes one hint per 2 s per connection.
                    time.sleep(2.1)
                    pages["Minh"].fill("#content", "")
                    pages["Minh"].evaluate("window.chatbox.state.typingSent = 0")
                    pages["Minh"].type("#content", "Mình")
                    an.wait_for_selector("#typing:not(:empty)")
                    an.eval_on_selector("#messages", "b => { b.scrollTop = 1e6; }")
                    an.evaluate("document.activeElement.blur()")
                    an.screenshot(path=str(HERE / f"screenshot-{size}-{scheme}.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
