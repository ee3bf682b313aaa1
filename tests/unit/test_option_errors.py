"""An operator's slip with an option gets a message about that option."""

import pytest
from twisted.python import usage

from chatbox.tap import Options


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rate=-1"], "must be 0 or more (per second), not -1"),
        (["--ip-send-rate=fast"], "'fast' is not a number (per second)"),
        (["--connection-rate=nan"], "must be 0 or more (per second)"),
        (["--shutdown-timeout=-2"], "must be 0 or more (seconds), not -2"),
        (["--handshake-timeout=soon"], "'soon' is not a number (seconds)"),
        (["--tls-cert=c.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-key=k.pem"], "--tls-cert and --tls-key go together"),
        (["--auth=on"], "must be off, optional or required, not 'on'"),
        (["--auth-secret=s"], "--auth-secret needs --auth optional or --auth required"),
        (
            ["--auth=off", "--auth-jwks=k.json"],
            "--auth-jwks needs --auth optional or --auth required",
        ),
        (
            ["--auth-public-key=k.pem"],
            "--auth-public-key needs --auth optional or --auth required",
        ),
        (["--auth-issuer=x"], "--auth-issuer needs --auth optional or --auth required"),
        (
            ["--auth=optional"],
            "--auth optional needs a key to check tokens with: --auth-secret, "
            "--auth-public-key or --auth-jwks",
        ),
        (
            ["--auth=required", "--auth-issuer=x"],
            "--auth required needs a key to check tokens with",
        ),
        (["--auth=optional", "--auth-secret="], "--auth optional needs a key"),
        (
            ["--auth=optional", "--auth-secret=s", "--auth-audience= "],
            "--auth-audience must not be empty",
        ),
        (["--auth-leeway=601"], "must be 0 to 600 seconds, not 601"),
        (["--auth-leeway=-1"], "must be 0 to 600 seconds, not -1"),
        (["--auth-leeway=1.5"], "'1.5' is not a whole number of seconds"),
    ],
)
def test_a_bad_value_is_refused_in_its_own_words(args, says):
    with pytest.raises(usage.UsageError) as refused:
        Options().parseOptions(args)
    assert says in str(refused.value)


def test_the_tls_pair_is_one_value_after_parsing():
    both = Options()
    both.parseOptions(["--tls-cert=c.pem", "--tls-key=k.pem"])
    assert both["tls"] == ("c.pem", "k.pem")
    neither = Options()
    neither.parseOptions([])
    assert neither["tls"] is None


def test_the_auth_options_parsed():
    config = Options()
    config.parseOptions([])
    assert (config["auth"], config["auth-leeway"]) == ("off", 60)
    config = Options()
    config.parseOptions(["--auth=required", "--auth-jwks=k.json", "--auth-leeway=0"])
    assert (config["auth"], config["auth-jwks"], config["auth-leeway"]) == (
        "required",
        "k.json",
        0,
    )
