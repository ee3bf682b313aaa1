"""The layers of docs/DESIGN.md hold: imports point one way, and a
single-process server never loads the Redis client."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "chatbox"

# What each layer must not import (docs/DESIGN.md, "Layers").
FORBIDDEN = {
    "chat": (
        "chatbox.wire.protocol",
        "chatbox.wire.factory",
        "chatbox.local",
        "chatbox.cluster",
        "chatbox.web",
        "chatbox.tap",
        "chatbox.service",
    ),
    "local": (
        "chatbox.wire.protocol",
        "chatbox.wire.factory",
        "chatbox.cluster",
        "chatbox.web",
        "chatbox.tap",
        "chatbox.service",
    ),
    "cluster": (
        "chatbox.wire.protocol",
        "chatbox.wire.factory",
        "chatbox.local.room",
        "chatbox.local.store",
        "chatbox.web",
        "chatbox.tap",
        "chatbox.service",
    ),
    "wire": (
        "chatbox.local",
        "chatbox.cluster",
        "chatbox.web",
        "chatbox.tap",
        "chatbox.service",
    ),
    "web": ("chatbox.local", "chatbox.cluster", "chatbox.tap", "chatbox.service"),
    # Tokens are checked and signed knowing nothing of connections or
    # storage: the handshake, `name` and the admin API all call it.
    "auth": (
        "chatbox.wire",
        "chatbox.local",
        "chatbox.cluster",
        "chatbox.web",
        "chatbox.admin",
        "chatbox.tap",
        "chatbox.service",
    ),
    # The operator's side acts through the rooms and the factory, never a
    # backend's own parts: one process and a cluster behave alike.
    "admin": ("chatbox.local", "chatbox.cluster", "chatbox.tap", "chatbox.service"),
}


def imports_of(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_only_what_is_below_it(layer):
    wrong = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in sorted((PACKAGE / layer).glob("*.py"))
        for name in imports_of(path)
        if name.startswith(FORBIDDEN[layer])
    ]
    assert not wrong, "\n".join(wrong)


def test_a_single_process_start_does_not_load_the_redis_client(tmp_path):
    program = f"""
import sys
from chatbox import tap
options = tap.Options()
options.parseOptions(["--port=tcp:0", "--data={tmp_path / "data.json"}"])
tap.makeService(options)
loaded = sorted(m for m in sys.modules if m.startswith(("txredisapi", "hiredis")))
print(loaded)
"""
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PACKAGE.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
