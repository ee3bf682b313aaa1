"""Refusals are counted and summarized, and a flood is cut short."""

from twisted.internet.task import Clock

from chatbox.wire.refusals import Refusals


def make(limit: int = 3):
    clock = Clock()
    lines: list[tuple[int, str]] = []
    return clock, lines, Refusals(clock, limit, lambda t, c: lines.append((t, c)))


def test_the_first_refusal_is_logged_at_once_then_one_summary_per_period():
    clock, lines, refusals = make(limit=1000)
    assert refusals.count("send WrongFormatContent", False) == "answer"
    assert lines == [(1, "send WrongFormatContent x1")]
    for _ in range(500):
        refusals.count("get RateLimited", True)
        refusals.count("other WrongFormatJSON", False)
    assert len(lines) == 1  # a thousand refusals, no new line yet
    clock.advance(10)
    assert lines[1] == (1000, "get RateLimited x500, other WrongFormatJSON x500")
    clock.advance(100)
    assert len(lines) == 2  # nothing counted, nothing written
    refusals.count("name RateLimited", True)
    assert lines[2] == (1, "name RateLimited x1")  # a new incident shows at once


def test_flush_writes_what_is_left_and_stops_the_timer():
    clock, lines, refusals = make()
    refusals.count("a", False)
    refusals.count("b", False)
    refusals.flush()
    assert lines == [(1, "a x1"), (1, "b x1")]
    assert not clock.getDelayedCalls()


def test_rate_limited_past_the_limit_within_a_period_is_flooding_once():
    _, _, refusals = make(limit=3)
    verdicts = [refusals.count("send RateLimited", True) for _ in range(6)]
    assert verdicts == ["answer"] * 3 + ["flooding", "drop", "drop"]


def test_other_refusals_and_slow_retries_are_never_flooding():
    clock, _, refusals = make(limit=3)
    assert {refusals.count("x WrongFormatJSON", False) for _ in range(100)} == {
        "answer"
    }
    for _ in range(10):  # three a period, as a polite client retries
        assert {refusals.count("send RateLimited", True) for _ in range(3)} == {
            "answer"
        }
        clock.advance(10)


def test_the_reply_gate_keeps_order_and_a_quarter_per_address():
    from chatbox.wire.backpressure import ByteGate

    gate = ByteGate(100)
    granted: list[tuple[str, int]] = []

    def ask(key: str, size: int):
        return gate.acquire(size, key).addCallback(
            lambda share: granted.append((key, share)) or share
        )

    ask("a", 25)
    ask("a", 10)  # "a" holds its quarter: waits for its own reply to be read
    ask("b", 25)
    ask("c", 25)
    ask("d", 25)
    ask("e", 25)  # the gate is full: waits
    assert granted == [("a", 25), ("b", 25), ("c", 25), ("d", 25)]
    gate.release(25, "b")
    assert granted[-1] == ("e", 25)
    gate.release(25, "a")
    assert granted[-1] == ("a", 10)
    ask("f", 1000)  # larger than a quarter: granted a quarter
    gate.release(25, "c")
    assert granted[-1] == ("f", 25)
