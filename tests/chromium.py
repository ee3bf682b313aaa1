"""How this project starts Debian's Chromium, for tests and docs/screenshot.py.

Headless, no sandbox (CI runs as root), and none of Chromium's background
traffic: on a machine whose network reaches only package registries, those
connections are refused by the dozen at every start.
"""

import shutil

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


def launch(playwright):
    return playwright.chromium.launch(executable_path=PATH, args=ARGS)
