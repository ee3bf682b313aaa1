"""twistd options, endpoints, and refusing to start on bad input."""

import json
import time

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    UNIXServerEndpoint,
)
from twisted.python import usage

from chatbox import tap
from chatbox.endpoints import EndpointError, server_endpoint


def test_a_bare_port_is_tcp_on_every_interface():
    endpoint, scheme = server_endpoint(reactor, "9000")
    assert isinstance(endpoint, TCP4ServerEndpoint) and scheme == "ws"
    assert endpoint._port == 9000 and endpoint._interface == ""


def test_endpoint_strings_pass_through(tmp_path):
    endpoint, _ = server_endpoint(reactor, "tcp:9001:interface=127.0.0.1")
    assert endpoint._interface == "127.0.0.1"
    endpoint, scheme = server_endpoint(reactor, f"unix:{tmp_path}/chat.sock")
    assert isinstance(endpoint, UNIXServerEndpoint) and scheme == "ws"


def test_tls_shortcut(tmp_path):
    import trustme

    cert = trustme.CA().issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    endpoint, scheme = server_endpoint(
        reactor,
        "tcp:9443:interface=\\:\\:1",
        (str(tmp_path / "c.pem"), str(tmp_path / "k.pem")),
    )
    assert isinstance(endpoint, SSL4ServerEndpoint) and scheme == "wss"
    assert endpoint._port == 9443 and endpoint._interface == "::1"


def test_a_key_that_does_not_match_the_certificate_stops_start_up(tmp_path):
    import trustme

    trustme.CA().issue_cert("localhost").cert_chain_pems[0].write_to_path(
        str(tmp_path / "c.pem")
    )
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(
        str(tmp_path / "k.pem")
    )
    with pytest.raises(EndpointError, match="cannot be used"):
        server_endpoint(
            reactor, "9443", (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
        )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port=nonsense:1"], "is not an endpoint"),
        (
            ["--tls-cert=/nonexistent/c.pem", "--tls-key=/nonexistent/k.pem"],
            "cannot read the TLS certificate",
        ),
        (
            ["--port=unix:/x", "--tls-cert=c", "--tls-key=k"],
            "need --port to be a number or a tcp: endpoint",
        ),
    ],
)
def test_bad_listening_options_stop_start_up_with_one_line(tmp_path, args, says):
    config = tap.Options()
    config.parseOptions([f"--data={tmp_path}/data.json", *args])
    with pytest.raises(SystemExit) as caught:
        tap.makeService(config, reactor)
    assert says in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "args",
    [
        ["--tls-cert=c.pem"],
        ["--history-cap=0"],
        ["--json-ping=-1"],
        ["--max-message-size=x"],
    ],
)
def test_bad_option_values_are_usage_errors(args):
    with pytest.raises(usage.UsageError):
        tap.Options().parseOptions(args)


def test_corrupt_history_stops_start_up_and_is_left_alone(tmp_path):
    data = tmp_path / "data.json"
    data.write_text('[{"name": "An", "content": "hi", "timestamp": "t"},]')
    config = tap.Options()
    config.parseOptions([f"--data={data}", "--port=tcp:0"])
    with pytest.raises(SystemExit) as caught:
        tap.makeService(config, reactor)
    assert str(caught.value).startswith(
        f"chatbox: cannot start: {data}: not valid JSON"
    )
    assert "line 1 column" in str(caught.value)
    assert data.read_text() == '[{"name": "An", "content": "hi", "timestamp": "t"},]'


def test_v2_history_loads(tmp_path):
    """An entry v2 wrote gets an id and `time` (ext), read from its v2
    timestamp in this server's zone, as v2 wrote it."""
    data = tmp_path / "data.json"
    data.write_text(
        json.dumps(
            [{"name": "An", "content": "cũ", "timestamp": "01/01/2020, 10:00:00"}]
        )
    )
    config = tap.Options()
    config.parseOptions([f"--data={data}", "--port=tcp:0"])
    service = tap.makeService(config, reactor)
    store = service.getServiceNamed("chat").room.store
    assert json.loads(store.history.entries[0]) == {
        "id": 1,
        "name": "An",
        "content": "cũ",
        "timestamp": "01/01/2020, 10:00:00",
        "time": int(time.mktime((2020, 1, 1, 10, 0, 0, 0, 0, -1))) * 1000,
    }


def test_a_port_beyond_65535_and_an_empty_data_path_are_refused_in_one_line(tmp_path):
    """Seen by a reviewer: --port 70000 gave a traceback and --data '' made
    files named .journal and .lock in the working folder."""
    from chatbox.endpoints import EndpointError, server_endpoint

    with pytest.raises(EndpointError, match="70000 is not a port number"):
        server_endpoint(None, "70000")
    with pytest.raises(EndpointError, match="70000 is not a port number"):
        server_endpoint(None, "tcp:70000:interface=127.0.0.1")
    config = tap.Options()
    with pytest.raises(usage.UsageError, match="--data must name a file"):
        config.parseOptions(["--data="])


def _auth_service(tmp_path, *args):
    config = tap.Options()
    config.parseOptions(
        [f"--data={tmp_path}/data.json", "--port=tcp:0:interface=127.0.0.1", *args]
    )
    return tap.makeService(config, reactor)


def test_auth_off_sets_no_verifier_but_the_moderator(tmp_path):
    service = _auth_service(tmp_path)
    chat = service.getServiceNamed("chat")
    factory = chat.factory
    assert (factory.auth_mode, factory.verifier) == ("off", None)
    assert factory.moderator is chat.moderator and factory.moderator is not None
    assert chat.moderator.auth_secret is None


@ensureDeferred
async def test_auth_sets_the_mode_verifier_and_secret_and_reloads_them(tmp_path):
    secret = tmp_path / "auth-secret"
    secret.write_bytes(b"k" * 32 + b"\n")
    service = _auth_service(
        tmp_path,
        "--auth=required",
        f"--auth-secret={secret}",
        "--auth-leeway=5",
        "--auth-issuer=https://school.example",
        "--auth-audience=chatbox",
    )
    factory = service.getServiceNamed("chat").factory
    verifier = factory.verifier
    assert factory.auth_mode == "required"
    assert verifier.secret == b"k" * 32
    assert (verifier.leeway, verifier.issuer, verifier.audience) == (
        5,
        "https://school.example",
        "chatbox",
    )
    moderator = service.getServiceNamed("chat").moderator
    assert factory.moderator is moderator
    assert moderator.auth_secret == b"k" * 32  # the verifier's, as it is now
    (reload_keys,) = service.getServiceNamed("reload").reloads
    secret.write_bytes(b"n" * 48)
    assert await reload_keys() is True
    assert verifier.secret == moderator.auth_secret == b"n" * 48
    secret.write_bytes(b"short")
    assert await reload_keys() is False
    assert verifier.secret == moderator.auth_secret == b"n" * 48


@pytest.mark.parametrize(
    ("option", "content", "says"),
    [
        ("secret", None, "--auth-secret {path}: cannot read it: No such file"),
        (
            "secret",
            b"k" * 31 + b"\n",
            "--auth-secret {path}: 31 bytes, needs at least 32",
        ),
        (
            "public-key",
            b"-----BEGIN PUBLIC KEY-----\nabc\n",
            "--auth-public-key {path}: not a PEM public key",
        ),
        (
            "jwks",
            b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}',
            "--auth-jwks {path} key 1: a symmetric (oct) key",
        ),
        ("jwks", b"{not json", "--auth-jwks {path}: not JSON"),
    ],
)
def test_a_bad_key_file_stops_start_up_in_one_line(tmp_path, option, content, says):
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as caught:
        _auth_service(tmp_path, "--auth=optional", f"--auth-{option}={path}")
    said = str(caught.value)
    assert said.startswith("chatbox: cannot start: " + says.format(path=path))
    assert "\n" not in said
    if content is not None:
        assert content.strip().decode() not in said
