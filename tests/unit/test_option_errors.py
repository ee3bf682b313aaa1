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
