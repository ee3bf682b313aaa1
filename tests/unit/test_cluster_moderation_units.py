"""RedisModeration without Redis: its scripts answered by the test, time by
a fake clock (chatbox.cluster.moderation says what the rules are)."""

from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from chatbox.chat.moderation import IModerationStore, OrderError
from chatbox.cluster import scripts
from chatbox.cluster.commands import Commands
from chatbox.cluster.keys import ORDERS_LENGTH, Keys
from chatbox.cluster.moderation import POLL_SECONDS, RedisModeration
from chatbox.wire import codec
from tests.unit.test_cluster_units import FakeLink


def _order(n: int) -> dict:
    return {"op": "slow", "room": "", "seconds": n, "by": "op"}


def _entries(*pairs: tuple[bytes, int]) -> list:
    return [[i, [b"o", codec.encode(_order(n))]] for i, n in pairs]


class _Node:
    """The default room, as far as the store needs one: its command link."""

    def __init__(self, link: FakeLink) -> None:
        self.link = link

    def commands_for(self, name: str) -> Commands:
        assert name == ""
        return Commands(self.link, Keys.under())


class Store:
    def __init__(self, snapshot: bytes | None = None) -> None:
        self.clock = MemoryReactorClock()
        self.link = FakeLink()
        self.applied: list[dict] = []
        self.reloaded: list[dict] = []
        self.store = RedisModeration(
            _Node(self.link),
            self.clock,
            lambda: {"applied": len(self.applied)},
            self.reloaded.append,
        )
        loading = self.store.load()
        self.link.pending(scripts.MODERATION_LOAD)[1].callback(snapshot)
        self.state = loading.result
        self.store.start(self.apply)

    def apply(self, order: dict) -> None:
        if order.get("op") == "bad":
            raise OrderError("no such op")
        self.applied.append(order)

    def poll(self, reply: list) -> list:
        """Answer the poll that waits; returns its arguments."""
        args, answer = self.link.pending(scripts.MODERATION_POLL)
        answer.callback(reply)
        return args


def test_orders_are_applied_once_each_in_order_from_the_last_applied():
    s = Store()
    assert s.state == {}
    assert s.poll([1, _entries((b"5-0", 1), (b"6-0", 2))]) == [b"0-0", 0, 500]
    s.clock.advance(POLL_SECONDS)
    assert s.poll([1, _entries((b"7-0", 3))]) == [b"6-0", 2, 500]
    s.clock.advance(POLL_SECONDS)
    assert s.poll([1, []]) == [b"7-0", 3, 500]
    assert s.applied == [_order(1), _order(2), _order(3)]


def test_a_submit_catches_up_stores_the_state_before_it_and_fires_once_applied():
    s = Store(codec.encode({"through": "4-0", "seen": 4, "state": {"x": 1}}))
    assert s.state == {"x": 1}
    s.poll([1, []])
    submitted = s.store.submit(_order(9))
    s.poll([1, _entries((b"5-0", 1))])  # another node's, applied first
    args, reply = s.link.pending(scripts.MODERATION_SUBMIT)
    order, record, through, most = args
    assert codec.decode(order) == _order(9) and most == ORDERS_LENGTH
    assert through == "5-0"
    assert codec.decode(record) == {
        "through": "5-0",
        "seen": 5,
        "state": {"applied": 1},
    }
    reply.callback([b"6-0", 1])
    assert not submitted.called  # stored, not yet applied here
    s.poll([1, _entries((b"6-0", 9))])
    assert submitted.called and submitted.result is None
    assert s.applied == [_order(1), _order(9)]


def test_a_node_behind_the_kept_orders_reloads_the_snapshot():
    s = Store()
    s.poll([0, 12, 3])  # 12 added, 3 kept: 9 trimmed, this node saw none
    _, reply = s.link.pending(scripts.MODERATION_LOAD)
    reply.callback(codec.encode({"through": "10-0", "seen": 10, "state": {"y": 2}}))
    assert s.reloaded == [{"y": 2}]
    assert s.poll([1, _entries((b"11-0", 11), (b"12-0", 12))])[:2] == [b"10-0", 10]
    assert s.applied == [_order(11), _order(12)]


def test_it_is_the_contracts_store_and_an_order_refused_fails_its_submit():
    s = Store()
    assert verifyObject(IModerationStore, s.store)
    s.poll([1, []])
    submitted = s.store.submit({"op": "bad"})
    s.poll([1, []])
    _, reply = s.link.pending(scripts.MODERATION_SUBMIT)
    reply.callback([b"3-0", 1])
    # Another node's order refused here too: logged, nobody's submit fails.
    s.poll([1, [[b"2-0", [b"o", codec.encode({"op": "bad"})]]]])
    assert not submitted.called
    s.clock.advance(POLL_SECONDS)
    s.poll([1, [[b"3-0", [b"o", codec.encode({"op": "bad"})]]]])
    assert submitted.result.check(OrderError)
    submitted.addErrback(lambda _: None)
    assert s.applied == []
