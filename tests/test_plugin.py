"""twistd finds chatbox in the installed package, from any working folder."""

import subprocess
from importlib import metadata

from pytest_twisted import ensureDeferred

from tests.process import TWISTD


def test_installed_distribution_carries_the_plugin_and_nothing_of_twisteds():
    files = {str(f) for f in metadata.files("chatbox") or []}
    assert "twisted/plugins/chatbox_plugin.py" in files
    # Shipping these would overwrite Twisted's own package files.
    assert "twisted/plugins/__init__.py" not in files
    assert "twisted/__init__.py" not in files


def chatbox_help(folder) -> subprocess.CompletedProcess:
    """`twistd chatbox --help`, run from `folder` with a bare environment."""
    return subprocess.run(
        [TWISTD, "chatbox", "--help"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_twistd_chatbox_help_from_a_folder_outside_the_repo(tmp_path):
    result = chatbox_help(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage: twistd [options] chatbox [options]" in result.stdout
    for option in (
        "--port",
        "--data",
        "--tls-cert",
        "--tls-key",
        "--history-cap",
        "--json-ping",
        "--ws-ping-interval",
        "--ws-ping-timeout",
        "--max-message-size",
        "--fold-threshold",
    ):
        assert option in result.stdout
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())  # no twistd.pid or stray files


def test_twistd_lists_chatbox_among_its_commands(tmp_path):
    result = subprocess.run(
        [TWISTD, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert "chatbox" in result.stdout and "classic-chatbox v2" in result.stdout


def test_every_option_is_documented_in_the_readme(tmp_path):
    import re
    from pathlib import Path

    result = chatbox_help(tmp_path)
    options = set(re.findall(r"--([a-z][a-z0-9-]+)=", result.stdout))
    assert len(options) > 15
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    undocumented = {o for o in options if f"`--{o}`" not in readme}
    assert not undocumented


def test_installed_metadata_declares_the_runtime_dependencies():
    requires = " ".join(metadata.requires("chatbox") or [])
    for package in (
        "twisted",
        "autobahn",
        "service-identity",
        "orjson",
        "prometheus-client",
    ):
        assert package in requires, requires


@ensureDeferred
async def test_child_processes_run_this_trees_code(tmp_path):
    """Crash and browser tests start twistd as a child; it must serve the
    code under test, not the copy pip installed before the change (a
    reviewer broke app.js and the frozen-server test stayed green)."""
    import signal
    from pathlib import Path

    from tests.http import fetch
    from tests.process import start

    server = await start(tmp_path)
    try:
        code, _, body = await fetch(server, "/static/app.js")
    finally:
        await server.kill(signal.SIGTERM)
    tree = Path(__file__).resolve().parent.parent / "chatbox/web/static/app.js"
    assert code == 200 and body == tree.read_bytes()
