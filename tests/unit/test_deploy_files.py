"""The files in deploy/ hold together with the code: the unit's command
line is one chatbox parses today, its stop timeout outlasts the shutdown it
asks for, the alert rules and the dashboard are well formed. Whether every
metric they query exists is tests/test_deploy.py's (a real scrape)."""

import json
import re
import shlex
from pathlib import Path

from twisted.scripts._twistd_unix import ServerOptions

from chatbox import tap

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"
UNIT = DEPLOY / "chatbox.service"
ALERTS = DEPLOY / "prometheus" / "chatbox-alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "chatbox-dashboard.json"


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key=value lines of a unit file, continuation lines joined, in order
    per key (a key may repeat)."""
    settings: dict[str, list[str]] = {}
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def exec_start(text: str) -> list[str]:
    (command,) = unit_settings(text)["ExecStart"]
    return shlex.split(command)


def seconds(value: str) -> float:
    units = {"": 1, "s": 1, "min": 60, "m": 60}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|min|m|)", value)
    assert match, f"cannot read {value!r} as seconds"
    return float(match.group(1)) * units[match.group(2)]


def json_yaml(path: Path) -> object:
    """The rule file is JSON below its # comments (JSON is YAML; Prometheus
    reads it as is): no YAML parser is needed to check it."""
    text = "".join(
        line for line in path.read_text().splitlines(True) if not line.startswith("#")
    )
    return json.loads(text)


def test_the_units_command_line_parses_as_twistd_and_chatbox_options():
    argv = exec_start(UNIT.read_text())
    assert Path(argv[0]).name == "twistd"
    config = ServerOptions()
    config.parseOptions(argv[1:])  # a renamed chatbox option fails here
    assert config.subCommand == "chatbox"
    assert isinstance(config.subOptions, tap.Options)
    assert config["nodaemon"] and config["pidfile"] == ""
    assert not config["logfile"], "under systemd chatbox logs to the journal"
    # Its own parse again, directly: the plugin lookup above could find
    # an installed chatbox rather than this tree's.
    chatbox = tap.Options()
    chatbox.parseOptions(argv[argv.index("chatbox") + 1 :])
    assert chatbox["trusted-proxies"] == 1
    assert chatbox["port"].endswith("interface=127.0.0.1")


def test_systemd_waits_longer_than_chatbox_takes_to_stop():
    text = UNIT.read_text()
    settings = unit_settings(text)
    argv = exec_start(text)
    chatbox = tap.Options()
    chatbox.parseOptions(argv[argv.index("chatbox") + 1 :])
    assert settings["KillSignal"] == ["SIGTERM"]
    # The clients' close, then the final fold of the journal.
    assert seconds(settings["TimeoutStopSec"][0]) >= chatbox["shutdown-timeout"] + 20
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["LimitNOFILE"] == ["65536"]
    for hardening in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert settings[hardening] == ["yes"], hardening
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["CapabilityBoundingSet"] == [""]
    assert settings["StateDirectory"] == ["chatbox"]
    # /metrics's process_* series need /proc/stat (ProcessCollector's boot
    # time): ProcSubset=pid would silently drop them all.
    assert "ProcSubset" not in settings
    # systemd makes a ConfigurationDirectory= root:root with its mode; at
    # anything but 0755 the service's own user could not read its files.
    assert "ConfigurationDirectory" not in settings
    # pyOpenSSL's cffi callbacks need write+execute memory: with it, a
    # chatbox given --tls-cert cannot start.
    assert "MemoryDenyWriteExecute" not in settings
    assert argv[argv.index("--data") + 1].startswith("/var/lib/chatbox/")


def test_the_alert_rules_are_well_formed():
    rules = json_yaml(ALERTS)
    (group,) = rules["groups"]
    names = [rule["alert"] for rule in group["rules"]]
    assert len(names) == len(set(names))
    for rule in group["rules"]:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule
    for wanted in (
        "ChatboxDown",
        "ChatboxPersistenceFailing",
        "ChatboxRedisDown",
        "ChatboxSlowConsumerCutoffsRising",
        "ChatboxRetentionPurgeFailing",
        "ChatboxRetentionPurgeStale",
        "ChatboxCertificateExpiringSoon",
    ):
        assert wanted in names


def test_the_dashboard_is_importable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    (source,) = dashboard["__inputs"]
    assert source["name"] == "DS_PROMETHEUS" and source["pluginId"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")")
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
