"""docs/PROTOCOL.md's ordering rules, one test each, against
chatbox.wire.ordering with plain Deferreds: no socket, no reactor.

`Client` stands in for ChatProtocol: it handles requests the way the
protocol does (a send's reply when the room's Deferred fires, a name's reply
when the room decides, a get's reply written past held frames), and the
test fires the room's Deferreds in the order it wants to try.
"""

from twisted.internet.defer import Deferred, succeed

from chatbox.wire.ordering import MAX_WAITING_BYTES, MAX_WAITING_REQUESTS, Ordering


class Client:
    def __init__(self, hold_limit: int = 0) -> None:
        self.handled: list[str] = []  # request frames, as handled
        self.wire: list[str] = []  # frames written, in order
        self.stored: dict[str, Deferred] = {}  # the room storing each send
        self.deciding: dict[str, Deferred] = {}  # the room deciding each name
        self.decide_at_once = False  # as a single process does
        self.pages: list[Deferred] = []  # one per get taken up
        self.unread: Deferred | None = None  # set: the client is not reading
        self.present = True
        self.held_too_much: list[int] = []
        self.order: Ordering[str] = Ordering(
            handle=self.handle,
            write=self.wire.append,
            drained=self.drained,
            frame_size=len,
            hold_limit=hold_limit,
            too_much_held=self.held_too_much.append,
        )

    def drained(self) -> Deferred:
        return self.unread if self.unread is not None else succeed(None)

    def receive(self, *requests: str) -> None:
        for request in requests:
            self.order.request(request.encode())

    def handle(self, payload: bytes, overflowing: bool) -> None:
        request = payload.decode()
        self.handled.append(request)
        kind, _, argument = request.partition(" ")
        if overflowing:
            self.order.deliver(f"{request}: RateLimited")
        elif kind == "send":
            self.order.send_started()
            stored = self.stored[argument] = Deferred()
            stored.addCallback(lambda _: self.order.deliver(f"{request}: ok"))
            stored.addBoth(self.order.send_settled)
        elif kind == "name":
            decided = succeed(None) if self.decide_at_once else Deferred()
            self.deciding[argument] = decided
            decided.addCallback(lambda _: self.order.deliver(f"{request}: ok"))
            self.order.name(decided)
        elif kind == "get":
            self.order.get(self.answer_get, lambda: self.present)
        else:
            self.order.deliver(f"{request}: refused")

    async def answer_get(self) -> None:
        page: Deferred = Deferred()
        self.pages.append(page)
        snapshot = await page
        self.wire.append(f"get: {snapshot}")  # past held frames, as protocol


def fire(deferred: Deferred, result: object = None) -> None:
    deferred.callback(result)


def test_nothing_waits_for_a_send_but_a_get() -> None:
    """ "Replies to one connection's `send`s come in the order sent, once
    each message is durable. Nothing waits for them but a `get`: a request
    refused at once (malformed, rate limited) and a reply to a later `name`
    may come before them." """
    client = Client()
    client.receive("send 1", "send 2", "bad", "name An")
    assert client.handled == ["send 1", "send 2", "bad", "name An"]
    fire(client.deciding["An"])
    assert client.wire == ["bad: refused", "name An: ok"]
    fire(client.stored["1"])
    fire(client.stored["2"])
    assert client.wire[2:] == ["send 1: ok", "send 2: ok"]


def test_a_get_waits_until_no_send_is_in_flight() -> None:
    """ "A `get` is answered only once none of the same connection's sends
    is still being stored, so it always contains the earlier ones (and any
    sent while it waited, whose replies then come before it)." """
    client = Client()
    client.receive("send 1", "get", "send 2")
    fire(client.stored["1"])
    assert client.pages == []  # send 2, sent while it waited, is in flight
    fire(client.stored["2"])
    assert len(client.pages) == 1
    fire(client.pages[0], "1, 2")
    assert client.wire == ["send 1: ok", "send 2: ok", "get: 1, 2"]


def test_a_failed_send_lets_a_waiting_get_go_on() -> None:
    """The same rule when storing fails: the `ErrorWhenSend` reply is out
    and the `get` is answered."""
    client = Client()
    client.receive("send 1", "get")
    client.stored["1"].errback(RuntimeError("disk full"))
    assert len(client.pages) == 1


def test_requests_after_a_name_wait_for_its_reply() -> None:
    """ "Requests sent after a `name` are handled, in order, once its reply
    is out, so `name` then `send` pipelined works even on a cluster node." """
    client = Client()
    client.receive("name An", "send 1", "name Bo", "get")
    assert client.handled == ["name An"]
    fire(client.deciding["An"])
    # Handled after the reply, and only up to the next undecided name.
    assert client.wire == ["name An: ok"]
    assert client.handled == ["name An", "send 1", "name Bo"]
    fire(client.deciding["Bo"])
    assert client.handled == ["name An", "send 1", "name Bo", "get"]
    assert client.wire == ["name An: ok", "name Bo: ok"]


def test_a_name_decided_at_once_holds_nothing() -> None:
    """The same rule on one process, where a `name` is decided at once: its
    reply is out before the next request is read."""
    client = Client()
    client.decide_at_once = True
    client.receive("name An", "send 1")
    assert client.handled == ["name An", "send 1"]
    assert client.wire == ["name An: ok"]


def test_past_256_waiting_requests_or_1_mib_each_is_answered_at_once() -> None:
    """ "At most 256 requests (and 1 MiB of them) wait so; each one beyond is
    answered at once with `RateLimited` (`retry_after` 1)." """
    assert (MAX_WAITING_REQUESTS, MAX_WAITING_BYTES) == (256, 1024 * 1024)
    client = Client()
    client.receive("name An")
    client.receive(*(f"send {i}" for i in range(MAX_WAITING_REQUESTS + 1)))
    assert client.wire == [f"send {MAX_WAITING_REQUESTS}: RateLimited"]

    client = Client()
    client.receive("name An")
    big = "send " + "x" * (MAX_WAITING_BYTES // 2)
    client.receive(big, big, "get")
    assert client.wire == [f"{big}: RateLimited"]
    fire(client.deciding["An"])
    assert client.handled[2:] == [big, "get"]  # the rest waited, in order


def test_exactly_1_mib_may_wait_and_one_byte_more_may_not() -> None:
    """The 1 MiB is a ceiling that may be reached: requests adding up to
    exactly MAX_WAITING_BYTES all wait; with one byte more, the request
    that would pass it is answered at once."""
    half = "send " + "x" * (MAX_WAITING_BYTES // 2 - len("send "))
    assert 2 * len(half.encode()) == MAX_WAITING_BYTES

    client = Client()
    client.receive("name An", half, half)
    assert client.wire == []  # both wait, at exactly the limit
    client.receive("1")  # one byte more
    assert client.wire == ["1: RateLimited"]
    fire(client.deciding["An"])
    assert client.handled == ["name An", "1", half, half]

    client = Client()
    client.receive("name An", half + "x")  # one byte over half...
    client.receive(half)  # ...so this one would pass the limit by one
    assert client.wire == [f"{half}: RateLimited"]


def test_while_a_get_is_answered_other_frames_wait_and_follow_it() -> None:
    """ "A `get` reply is a snapshot, and nothing that happened after it
    reaches the client before it: while a `get` is answered, that client's
    events and other replies wait and follow it." """
    client = Client()
    client.receive("get")
    client.order.deliver("event 1")
    client.receive("bad")
    fire(client.pages[0], "history")
    client.order.deliver("event 2")
    assert client.wire == ["get: history", "event 1", "bad: refused", "event 2"]


def test_what_waits_behind_a_get_reply_counts_as_unread_output() -> None:
    """ "What waits so counts as unread output: past `--max-pending-output`
    the client is closed with 1013." (The connection closes when told.)"""
    client = Client(hold_limit=10)
    client.receive("get")
    client.order.deliver("12345")
    client.order.deliver("67890")
    assert client.held_too_much == []
    client.order.deliver("X")
    assert client.held_too_much == [11]
    fire(client.pages[0], "h")
    client.receive("get")
    client.order.deliver("a" * 11)  # counted afresh for each reply
    assert client.held_too_much == [11, 11]


def test_events_before_a_get_is_taken_up_are_in_its_snapshot() -> None:
    """ "On one process, a `message` event that arrives before a `get` reply
    is in it, and one that arrives after it is newer than everything in it;
    so a client that renders the reply and then appends events shows each
    message once." The snapshot is taken after frames start to be held:
    what comes before goes out at once, what comes after follows the
    reply."""
    client = Client()
    client.receive("send 1", "get")
    client.order.deliver("event A")  # while the get waits for send 1
    fire(client.stored["1"])
    assert client.wire == ["event A", "send 1: ok"]
    client.order.deliver("event B")  # the snapshot is being read
    assert client.wire == ["event A", "send 1: ok"]
    fire(client.pages[0], "A, 1")
    assert client.wire == ["event A", "send 1: ok", "get: A, 1", "event B"]


def test_gets_are_answered_one_at_a_time_once_the_client_has_read() -> None:
    """ "`get`s of one connection are answered one at a time, in order, each
    once the client has read what it was sent before (the server waits
    while its send buffer for that client is full)." """
    client = Client()
    client.unread = Deferred()
    client.receive("get", "get")
    assert client.pages == []  # the client is not reading
    fire(client.unread)
    assert len(client.pages) == 1
    client.unread = Deferred()  # the first reply fills the send buffer
    fire(client.pages[0], "first")
    assert len(client.pages) == 1
    fire(client.unread)
    assert len(client.pages) == 2
    fire(client.pages[1], "second")
    assert client.wire == ["get: first", "get: second"]


def test_a_get_from_a_client_gone_while_waiting_is_not_answered() -> None:
    """A `get` whose client closed while it waited is dropped, and holds
    nothing."""
    client = Client()
    client.receive("send 1", "get")
    client.present = False
    fire(client.stored["1"])
    assert client.pages == []
    client.order.deliver("event")
    assert client.wire == ["send 1: ok", "event"]
