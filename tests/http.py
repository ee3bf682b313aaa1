"""Plain HTTP against a running chatbox (in-process or a child): the page,
/healthz and /metrics. `server` is anything with a `port`."""

import re

from twisted.internet import reactor
from twisted.web.client import Agent, readBody


async def fetch(server, path: str) -> tuple[int, dict, bytes]:
    response = await Agent(reactor).request(
        b"GET", f"http://127.0.0.1:{server.port}{path}".encode()
    )
    body = await readBody(response)
    headers = {
        k.decode().lower(): v[0].decode()
        for k, v in response.headers.getAllRawHeaders()
    }
    return response.code, headers, body


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = (
        rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$"
        if labels
        else rf"^{name} (\S+)$"
    )
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
