"""Regenerate docs/screenshot.png: a real server, two people chatting.

.venv/bin/python docs/screenshot.py
"""

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests import chromium  # noqa: E402  (one place knows how to start it)


def main() -> None:
    workdir = tempfile.mkdtemp(prefix="chatbox-shot-")
    twistd = str(Path(sys.executable).parent / "twistd")
    server = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "chatbox", "--port=tcp:0:interface=127.0.0.1"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in server.stdout:
            match = re.search(r"listening on ws://[\d.]+:(\d+)", line)
            if match:
                url = f"http://127.0.0.1:{match.group(1)}/"
                break
        with sync_playwright() as p:
            browser = chromium.launch(p)
            pages = {}
            for name in ("Linh", "Minh", "An"):
                page = browser.new_page(
                    locale="en-GB", viewport={"width": 1100, "height": 640}
                )
                page.goto(url)
                page.fill("#name", name)
                page.press("#name", "Enter")
                page.wait_for_selector("#content:not([disabled])")
                pages[name] = page
            lines = [
                ("Linh", "Good morning! Is everyone here for the 9:00 lab?"),
                ("Minh", "Yes — I'm setting up the projector now."),
                ("An", "On my way, 5 minutes!"),
                (
                    "Linh",
                    "Great. Today: WebSockets and Twisted. "
                    "Slides are in the shared folder.",
                ),
                ("Minh", "Chào cả lớp! Nhớ mang laptop nhé."),
            ]
            for name, text in lines:
                pages[name].fill("#content", text)
                pages[name].press("#content", "Enter")
                pages[name].wait_for_selector(
                    ".message.mine[data-state=sent] >> nth=-1"
                )
                time.sleep(0.2)
            pages["Minh"].fill("#name", "Minh (TA)")
            pages["Minh"].click("#name-button")
            pages["An"].wait_for_selector("text=Minh is now Minh (TA)")
            pages["An"].screenshot(path=str(HERE / "screenshot.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
