"""One WebSocket connection speaking the classic-chatbox v2 protocol.

docs/PROTOCOL.md is the wire contract this module implements. The class is a
thin adapter: it parses each text frame, dispatches on `type` to one
`handle_<type>` method, and turns every `Refused` into its `status: false`
reply in one place (`_handle`, through `refuse`). Shared state (who is
registered, the history) belongs to the room (chatbox.chat.room); a
connection owns only what is its own: its place in the ordering of its own
replies.

That order (a `get` waits for earlier sends, requests wait behind a `name`,
frames wait behind a `get` reply) is kept by chatbox.wire.ordering's
Ordering; this class hands it each request frame, `name` outcome, send,
`get` and outgoing frame.

Verified nicknames and moderators (docs/PROTOCOL.md, "Verified nicknames
(ext)"): a connection may carry an `Identity` (chatbox.auth),
from a token in its handshake or an `auth` request. The identity decides which
nickname it may take (the moderation rules' `name_refusal`), marks its
replies, events and messages as verified, and lets a moderator act through
the same Moderator as the admin API (`factory.moderator`; each action's
fields are chatbox.wire.moderating's to read). The token itself
is kept nowhere and never logged: only the name, source and jti are.

Private hooks: a few things below use Autobahn and Twisted beyond their
public API (each is marked "Private hook" where it is used, with why and
what it relies on). tests/unit/test_private_hooks.py fails, naming the hook,
if an upgrade removes or renames one.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatbox.auth.identity import Identity, TokenRefused
from chatbox.chat.arns import NameTaken, is_valid_name, name_keys
from chatbox.chat.content import is_valid_content
from chatbox.chat.moderation import ModerationError
from chatbox.chat.room import IRoom, Posted, RoomError
from chatbox.chat.roomnames import NotARoom
from chatbox.chat.rooms import RoomRefused
from chatbox.chat.sends import valid_send_id
from chatbox.httptext import canned
from chatbox.limits import AddressBuckets, TokenBucket, address_key, client_address
from chatbox.wire import codec, messages, moderating
from chatbox.wire.backpressure import PendingOutput
from chatbox.wire.clock import Moment
from chatbox.wire.messages import Refused
from chatbox.wire.ordering import Ordering
from chatbox.wire.refusals import Refusals

if TYPE_CHECKING:
    from chatbox.wire.factory import ChatFactory

__all__ = ["NEEDS_TOKEN", "ChatProtocol", "handshake_tokens"]

CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013
_INTERNAL_ERROR = "internal error"
# A `get` reply at least this big is built off the reactor thread, so that a
# bare `get` of a 10,000-message history does not hold up everyone else.
LARGE_REPLY = 256 * 1024
# A connection that keeps sending while being told RateLimited is flooding;
# past this many such refusals in 10 s (or twice the burst, if more) it is
# closed with 1008 rather than answered forever (chatbox.wire.refusals).
FLOOD_REFUSALS = 50
# ext typing: at most one event per connection this often (seconds).
TYPING_INTERVAL = 2.0
# Frames of any kind (fragments, pings, pongs) a connection may send for each
# request --rate/--burst allow it; past that it is closed with 1008.
FRAMES_PER_REQUEST = 20
# What a connection closed for flooding may still send, unparsed, before it
# is dropped.
DISCARD_BYTES = 4 * 1024 * 1024


# What a close frame's reason may hold (RFC 6455: 125 bytes less the code).
CLOSE_REASON_BYTES = 123
# retry_after for a mute without an end (only a hand-edited rule has none).
MUTED_FOR_GOOD = 10 * 365 * 24 * 3600 * 1000

# -- verified nicknames --
# A token refused at the handshake: the close code and, as its reason, the
# token's refusal reason (TokenExpired, ...), so a browser can tell why.
CLOSE_TOKEN_REFUSED = 4401
# What --auth required answers a handshake without a token (chatbox.web
# refuses it with 401 before any WebSocket; onConnect again, should one
# get past), in both of the page's languages.
NEEDS_TOKEN = (
    "this chat needs a sign-in token: open the link you were given\n"
    "cuộc trò chuyện này cần mã đăng nhập: hãy mở đường liên kết bạn đã được gửi"
)
# A verified claim that finds a guest on its nickname has the guest kicked
# and asks again every CLAIM_RETRY seconds, for CLAIM_PATIENCE seconds in
# all; a guest that took it back meanwhile is kicked again, at most once
# every KICK_AGAIN seconds (each kick is an audit line).
CLAIM_RETRY = 0.1
CLAIM_PATIENCE = 5.0
KICK_AGAIN = 1.0
SQUATTER_KICKED = "this nickname belongs to a verified user"


def handshake_tokens(
    params: Mapping[str, Sequence[str]], authorization: str | None
) -> list[str]:
    """Every token a handshake carries: `?token=` in the URL (`params` as
    Autobahn's ConnectionRequest has them, urllib's parse_qs, which drops
    empty values) and an `Authorization: Bearer` header (as one string,
    repeated headers joined by commas, as Autobahn sees it). chatbox.web
    asks it too, so both sides agree on what "no token" is. Another
    Authorization scheme (a proxy's Basic, say) is not chatbox's and is
    ignored."""
    found = [token for token in params.get("token", ()) if token]
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            found.append(credentials.strip())
    return found


def _moderation_refusal(failure: Failure) -> str | None:
    """The sentence of a ModerationError (an action the Moderator refused
    for a reason whoever asked can fix), else None: a fault."""
    if failure.check(ModerationError):
        return failure.value.message
    return None


def _close_reason(reason: str) -> str:
    encoded = reason.encode("utf-8")[:CLOSE_REASON_BYTES]
    return encoded.decode("utf-8", errors="ignore")


def _left(mute: Any, now: int) -> int:
    """Milliseconds until a mute ends."""
    return MUTED_FOR_GOOD if mute.expires is None else mute.expires - now


def _seconds(millis: float) -> float:
    """retry_after in seconds, never 0 while something still holds."""
    return max(0.001, round(millis / 1000, 3))


def _optional_id(request: dict[str, Any], field: str) -> int | None:
    value = request.get(field)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise Refused(messages.wrong_argument("get", field))
    return value


class ChatProtocol(WebSocketServerProtocol):
    logger = Logger()
    factory: "ChatFactory"
    room: IRoom
    _order: Ordering[PreparedMessage]  # set in connectionMade

    def __init__(self) -> None:
        super().__init__()
        self.address: str | None = None  # set once the handshake is admitted
        # What per-address limits and budgets count it under (an IPv6 /64).
        self.address_key: str | None = None
        self._cut_off = False
        self._refusals: Refusals | None = None  # set in connectionMade
        self._frames: TokenBucket | None = None  # set in connectionMade
        self._discarding: int | None = None  # bytes still to throw away
        self._typing_quiet_until = 0.0  # ext typing: no event before then
        # The room the handshake's path named, once entered (chatbox.chat.rooms):
        # `room` is set with it, before any request can arrive.
        self.room_name: str | None = None
        self._lost = False
        # Who the connection's token vouches for (chatbox.auth), if it
        # showed one that was good; a token refused at the handshake is
        # kept until open, to be told and closed with 4401.
        self.identity: Identity | None = None
        self._token_refused: TokenRefused | None = None

    # -- connection life --

    def connectionMade(self) -> None:
        super().connectionMade()
        limits = self.factory.limits
        self._requests = TokenBucket(
            limits.rate, limits.burst, self.factory.reactor.seconds()
        )
        self._output = PendingOutput(limits.max_pending_output, self.transport)
        self._order = Ordering(
            handle=self._handle,
            write=self._write_now,
            drained=self._output.drained,
            frame_size=lambda prepared: len(prepared.payloadHybi),
            hold_limit=limits.max_pending_output,
            too_much_held=self._stopped_reading,
        )
        # Frames of any kind: FRAMES_PER_REQUEST times the request limit.
        self._frames = (
            TokenBucket(
                FRAMES_PER_REQUEST * limits.rate,
                FRAMES_PER_REQUEST * limits.burst,
                self.factory.reactor.seconds(),
            )
            if limits.rate > 0
            else None
        )
        self._refusals = Refusals(
            self.factory.reactor,
            max(FLOOD_REFUSALS, 2 * limits.burst),
            self._log_refusals,
        )
        # Private hook (producer take-over): PendingOutput must be the
        # transport's producer to hear pauseProducing/resumeProducing. Over
        # a WebSocketResource the transport still has twisted.web's
        # HTTPChannel registered as its producer, which will never
        # unregister. Relies on Twisted's FileDescriptor.registerProducer
        # raising RuntimeError while another producer is registered, and on
        # Autobahn's registerProducer/unregisterProducer passing straight
        # to the transport.
        try:
            self.registerProducer(self._output, True)
        except RuntimeError:
            # Taken over from twisted.web's HTTPChannel, which registered
            # itself and will never unregister: the connection is ours now.
            self.unregisterProducer()
            self.registerProducer(self._output, True)
        self.factory.connection_made(self)

    def onConnect(self, request: ConnectionRequest) -> "Deferred[None]":
        """Admit or refuse the handshake (origin, connection limits), then
        enter the room its path names, which may have to load first."""
        peer = self.transport.getPeer()
        address = client_address(
            getattr(peer, "host", str(peer)),
            request.headers.get("x-forwarded-for"),
            self.factory.limits.trusted_proxies,
        )
        self.factory.admit(self, address, request.headers.get("origin"))
        self.address = address
        self.address_key = address_key(address)
        try:
            name = self.factory.rooms.socket_room(request.path)
        except NotARoom as e:
            raise ConnectionDeny(404, str(e)) from None
        if self.factory.auth_mode != "off":
            self._handshake_token(request, name)
        entering = self.factory.rooms.enter(name)

        def entered(room: IRoom) -> None:
            if self._lost:  # gone while the room loaded
                self.factory.rooms.leave(name)
                raise ConnectionDeny(410, "connection closed")
            self.room = room
            self.room_name = name

        def refused(failure: Failure) -> None:
            failure.trap(RoomRefused)
            raise ConnectionDeny(failure.value.status, str(failure.value))

        return entering.addCallbacks(entered, refused)

    def _handshake_token(self, request: ConnectionRequest, room: str) -> None:
        """Check the handshake's token for the room of its path. A good one
        gives the connection its Identity; a refused one still lets the
        handshake complete, so the client can be told why (onOpen)."""
        tokens = handshake_tokens(request.params, request.headers.get("authorization"))
        if not tokens:
            if self.factory.auth_mode == "required":
                raise ConnectionDeny(401, NEEDS_TOKEN)
            return
        try:
            if len(tokens) > 1:
                raise TokenRefused(
                    "TokenMalformed",
                    "the handshake carries more than one token (URL and header)",
                )
            self.identity = self._verify(tokens[0], room)
        except TokenRefused as refused:
            self._token_refused = refused

    def _verify(self, token: str, room: str) -> Identity:
        """The Identity `token` vouches for in `room`, or TokenRefused. The
        verifier's own faults are logged (they never hold the token: see
        chatbox.auth.verifier) and refuse the token."""
        try:
            return self.factory.verifier.verify(
                token, room, self.factory.reactor.seconds()
            )
        except TokenRefused:
            raise
        except Exception:
            self.logger.failure("fault checking a token from {peer}", peer=self.peer)
            raise TokenRefused(
                "TokenMalformed", "the token could not be checked"
            ) from None

    def sendHttpErrorResponse(
        self,
        code: int,
        reason: str,
        responseHeaders: list[tuple[str, str]] | None = None,
    ) -> None:
        """A handshake refused here, after chatbox.web let it through (a
        room that failed to load as it arrived), gets what chatbox.web
        answers every other refusal: the reason as text/plain, not only
        Autobahn's bare status line.

        Private hook: relies on Autobahn's failHandshake answering through
        this undocumented method, with these arguments."""
        headers = [f"{name}: {value}".encode() for name, value in responseHeaders or ()]
        self.sendData(canned(code, reason, *headers))

    def sendData(
        self, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        """Private hook: Autobahn writes every frame it makes itself (the
        handshake answer, pings, pongs, close frames) through this
        undocumented method, with these arguments; overriding it is how
        they are counted and refused to a client that stopped reading."""
        if self._admit_output(data):
            super().sendData(data, sync, chopsize)

    def deliver(self, prepared: PreparedMessage) -> None:
        """Broadcast fast path: the frame is complete and shared by every
        recipient, so it goes straight to the transport, with none of
        Autobahn's per-frame bookkeeping (see _write_now)."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        self._order.deliver(prepared)

    def _stopped_reading(self, unread: int) -> None:
        """Told of a client that is not reading: frames held behind its
        `get` reply past the output limit, or a large reply left unread."""
        if not self._cut_off:
            self._cut(unread)

    def _write_now(self, prepared: PreparedMessage) -> None:
        """Onto the wire, past anything held: counted, and refused to a
        client that stopped reading.

        Private hook (broadcast fast path): one frame, made once by the
        factory's prepareMessage, is written to every recipient without
        Autobahn's sendPreparedMessage and sendData, whose per-frame
        bookkeeping (debug logging, traffic statistics) costs more than the
        write. Relies on PreparedMessage.payloadHybi being the whole
        unmasked frame, on `_perMessageCompress` being None unless
        compression was negotiated (then sendPreparedMessage must compress
        per connection), and on Autobahn's own send queue staying empty
        (filled only by sendData with sync or chopsize, which chatbox never
        asks for), so a direct write cannot jump ahead of queued bytes.
        """
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        if self._perMessageCompress is not None:  # never negotiated today
            self.sendPreparedMessage(prepared)
        elif self._admit_output(prepared.payloadHybi):
            self.transport.write(prepared.payloadHybi)

    def _admit_output(self, data: bytes) -> bool:
        """Count outgoing bytes; False once a client that stopped reading
        has had all it may have (it is then closed with 1013)."""
        if not self._cut_off and self._output.over_limit(len(data)):
            self._cut(self._output.unsent)
            return False
        self.factory.bytes_out += len(data)
        self._written += len(data)
        return True

    _written = 0  # bytes this connection has been sent, for onAutoPingTimeout

    def _cut(self, unsent: int) -> None:
        # Whole frames are dropped, so the stream stays valid up to the
        # close frame; Autobahn's close handshake timeout then drops TCP.
        self._cut_off = True
        self.factory.metrics.slow_consumers.inc()
        self._note(
            "cutting off {peer}: stopped reading, {unsent} bytes unread",
            peer=self.peer,
            unsent=unsent,
        )
        self.close_with(CLOSE_TRY_AGAIN_LATER, "too slow: stopped reading")

    def _note(self, text: str, **fields: object) -> None:
        """A routine log line about this connection, within its address's
        budget (chatbox.logsafe.LogBudget)."""
        if self.factory.log_budget.allow(self.address_key):
            self.logger.info(text, **fields)

    def connectionLost(self, reason: Failure) -> None:
        self._lost = True
        try:
            super().connectionLost(reason)
        finally:
            if self._refusals is not None:
                self._refusals.flush()
            # Autobahn's dropConnection unregisters the producer before it
            # aborts, so Twisted never tells it the connection is gone; and
            # whoever waits for this client to read must stop waiting.
            if hasattr(self, "_output"):
                self._output.stopProducing()
            self.factory.connection_lost(self)

    def onOpen(self) -> None:
        self._note(
            "connection from {address} ({peer})", address=self.address, peer=self.peer
        )
        if self.factory.ping_frame is not None:
            self.deliver(self.factory.ping_frame)  # the first, at once
        refused = self._token_refused
        if refused is not None:
            self._note(
                "refused a token from {peer} ({address}): {reason}",
                peer=self.peer,
                address=self.address,
                reason=refused.reason,
            )
            self.reply(messages.auth_refused(refused.reason, refused.error))
            self.close_with(CLOSE_TOKEN_REFUSED, refused.reason)
        elif self.identity is not None:
            self._vouched(self.identity)

    def _vouched(self, identity: Identity) -> None:
        """A good token: the client learns what it may do, and its nickname
        becomes protected (the Moderator's `verify` submits that only when
        the protection does not cover these rooms yet). Protection is not
        waited for: the connection already holds its own name by its token;
        a failure (10,000 verified names, say) is logged, never the token."""
        rooms = None if identity.rooms is None else sorted(identity.rooms)
        self.reply(
            messages.auth_ok(
                identity.name, sorted(identity.roles), rooms, identity.expires
            )
        )
        self._note(
            "{peer} showed a token for {name!r} ({source}, jti {jti})",
            peer=self.peer,
            name=identity.name,
            source=identity.source,
            jti=identity.token_id,
        )
        moderator = self.factory.moderator
        if moderator is None:
            return
        protected = maybeDeferred(
            moderator.verify, "token " + identity.describe(), identity.name, rooms
        )

        def failed(failure: Failure) -> None:
            refusal = _moderation_refusal(failure)
            if refusal is None:
                self.logger.failure(
                    "fault protecting {name!r}", failure, name=identity.name
                )
            else:
                self._note(
                    "nickname {name!r} not protected: {why}",
                    name=identity.name,
                    why=refusal,
                )

        protected.addErrback(failed)

    @property
    def can_send(self) -> bool:
        return self.state == WebSocketProtocol.STATE_OPEN

    def close_with(self, code: int, reason: str) -> None:
        """Close with any RFC 6455 code; Autobahn's sendClose allows only 1000
        and 3000-4999, but 1001 (going away) and 1003 (unsupported data) are
        the codes RFC 6455 gives these situations. A connection already
        closing keeps the close frame it was sent (aborting now would drop
        it unsent); one not yet open is dropped.

        Private hook: sendCloseFrame is Autobahn's internal close writer,
        which takes any code (and, while open, starts the close handshake
        and its timeout) where sendClose refuses these."""
        if self.can_send:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"))
        elif self.state != WebSocketProtocol.STATE_CLOSING:
            self.dropConnection(abort=True)

    def moderated(
        self, notice: messages.Message, close: int | None, reason: str
    ) -> None:
        """An operator acted on this connection (chatbox.admin.moderator):
        it is told why first, then closed with `close` (kick, ban) if given,
        the reason cut to what a close frame holds."""
        if not self.can_send:
            return
        self.deliver(self.factory.prepareMessage(codec.encode(notice)))
        if close is not None:
            self.close_with(close, _close_reason(reason))

    def reply(self, message: messages.Message) -> None:
        """Send one reply to this client, if it is still there.

        Every reply passes here, so this is where outcomes are counted.
        Replies are framed without Autobahn's sendMessage, whose
        maxMessagePayloadSize check is meant for what clients send: a reply
        is as long as the history and online list it carries.
        """
        outcome = "ok" if message.get("status") else message.get("reason", "?")
        self.factory.metrics.request(message.get("type"), outcome)
        if self.can_send:
            self.deliver(self.factory.prepareMessage(codec.encode(message)))

    # -- requests --

    def onFrameBegin(self) -> None:
        """Every frame counts, not only whole requests: empty continuation
        fragments or pings cost the server as much to parse as a request and
        never reach onMessage, so they would escape the request limit.

        Private hook: Autobahn's parser calls this undocumented method once
        per frame header, control frames included; this override must call
        it on, since Autobahn's own sets up control-frame buffering."""
        if (
            self._frames is not None
            and not self._cut_off
            and self._frames.take(self.factory.reactor.seconds())
        ):
            self._cut_off = True
            self._note(
                "closing {peer} ({address}): too many WebSocket frames",
                peer=self.peer,
                address=self.address,
            )
            self.factory.metrics.request("frame", "Flooding")
            self._close_flooder()
        super().onFrameBegin()

    def _close_flooder(self) -> None:
        """Close with 1008 and parse nothing more it sends. What it sends is
        still read and thrown away (up to DISCARD_BYTES), not left unread:
        closing a socket with unread bytes sends a reset, which can destroy
        the close frame before the client reads why it was closed."""
        self.close_with(CLOSE_POLICY_VIOLATION, "flooding")
        if self._discarding is None:
            self._discarding = DISCARD_BYTES
            # And none of what was read with it: Autobahn's parser keeps the
            # unparsed rest of a read in `data` (and fails the connection,
            # dropping the close frame, on data frames after a close).
            # Private hook: relies on `data` being that buffer (appended to
            # by _dataReceived, consumed frame by frame by processData), so
            # that emptying it from onFrameBegin ends the parsing loop.
            self.data = b""

    def dataReceived(self, data: bytes) -> None:
        if self._discarding is None:
            super().dataReceived(data)
            return
        self._discarding -= len(data)
        if self._discarding < 0:
            self.transport.abortConnection()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._token_refused is not None:
            return  # being closed with 4401: nothing it sends is read
        if isBinary:
            self._note("refused a binary frame from {peer}", peer=self.peer)
            self.close_with(CLOSE_UNSUPPORTED_DATA, "text frames only")
            return
        self._order.request(payload)

    def _handle(self, payload: bytes, overflowing: bool = False) -> None:
        try:
            decoded = codec.decode(payload)
        except codec.DecodeError:
            decoded = None
        request: dict[str, Any] = decoded if isinstance(decoded, dict) else {}
        kind = request.get("type")
        try:
            if overflowing:
                wait = 1.0
            elif kind == "typing" and self.room.name_of(self) is not None:
                # A hint is dropped, not refused, when there are too many:
                # a client sending one per keystroke must not be told
                # RateLimited, nor closed as a flooder. The frame budget
                # still bounds what parsing them costs.
                wait = 0.0
            else:
                wait = self._requests.take(self.factory.reactor.seconds())
            if wait:
                limited = kind if isinstance(kind, str) else None
                raise Refused(messages.rate_limited(limited, wait))
            if not isinstance(decoded, dict):
                raise Refused(messages.wrong_format_json())
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise Refused(messages.unknown_type())
            handler(self, request)
        except Refused as refusal:
            self.refuse(kind, refusal)
        except Exception:
            self.logger.failure(
                "fault handling {kind!r} from {peer}", kind=kind, peer=self.peer
            )
            self.reply(self._fault(kind, request, _INTERNAL_ERROR))

    def refuse(self, kind: object, refusal: Refused) -> None:
        """Answer a refusal; it is counted, and logged only in summaries."""
        known = kind if isinstance(kind, str) and kind in self._handlers else "other"
        assert self._refusals is not None
        verdict = self._refusals.count(
            f"{known} {refusal.reason}", refusal.reason == "RateLimited"
        )
        if verdict == "answer":
            self.reply(refusal.reply)
        elif verdict == "flooding":
            self._note(
                "closing {peer} ({address}): kept sending while rate limited",
                peer=self.peer,
                address=self.address,
            )
            self.factory.metrics.request(kind, "Flooding")
            self._close_flooder()

    def _log_refusals(self, total: int, counts: str) -> None:
        self._note(
            "refused {total} request(s) from {peer}: {counts}",
            total=total,
            peer=self.peer,
            counts=counts,
        )

    def _fault(
        self, kind: object, request: dict[str, Any], error: str
    ) -> messages.Message:
        """The `ErrorWhen...` reply for a request the server failed to carry out."""
        return messages.fault(kind, self.room.name_of(self), request, error)

    def _per_address(self, buckets: AddressBuckets, kind: str) -> None:
        """Spend from this client address's share, whatever connection it
        uses: reconnecting resets the connection's bucket, never this."""
        key = self.address_key
        if key is None:
            return
        now = self.factory.reactor.seconds()
        if not buckets.take(key, now):
            raise Refused(messages.rate_limited(kind, buckets.retry_after(key, now)))

    def _registered_name(self, kind: str) -> str:
        name = self.room.name_of(self)
        if name is None:
            raise Refused(messages.unknown_register(kind))
        return name

    def handle_name(self, request: dict[str, Any]) -> None:
        if "name" not in request:
            raise Refused(messages.not_enough_key("name", "name"))
        name = request["name"]
        old = self.room.name_of(self)
        self._per_address(self.factory.names_per_address, "name")
        verified = self.identity is not None
        # Only a verified claim says so: a guest's is v2's call, as before.
        marked = {"verified": True} if verified else {}
        if old is None:
            if not is_valid_name(name):
                raise Refused(messages.register_refused(name, "WrongFormatName"))
            rule = self._name_rule(name)
            if rule is not None:
                taken = messages.register_refused(name, "NameAlreadyUsed", rule)
                raise Refused(taken)
            now = self.factory.now_ms()
            mute = self.factory.moderation.muted(
                None, self.address, self.room_name, now
            )
            if mute is not None:
                # Everyone is told each registration: a muted address must
                # not speak through a stream of new nicknames (its
                # connections registered before the mute stay, and read).
                self.factory.metrics.moderation_refusals.labels("muted").inc()
                refused = messages.register_refused(name, "Muted", mute.reason)
                refused["retry_after"] = _seconds(_left(mute, now))
                raise Refused(refused)
            claimed = self._take(
                name, lambda when: self.room.claim(self, name, when, **marked)
            )

            def registered(outcome: tuple[object, Moment]) -> None:
                self.reply(messages.register_ok(name, outcome[1], verified))
                self._note("{peer} registered as {name!r}", peer=self.peer, name=name)

            def refused(reason: str, error: str | None = None) -> Refused:
                return Refused(messages.register_refused(name, reason, error))

            self._settle_name(claimed, registered, refused, "ErrorWhenRegister")
        else:
            if not is_valid_name(name):
                raise Refused(messages.change_refused(old, name, "WrongFormatName"))
            rule = self._name_rule(name)
            if rule is not None:
                raise Refused(
                    messages.change_refused(old, name, "NameAlreadyUsed", rule)
                )
            mute = self._mute_on(old, self.factory.now_ms())
            if mute is not None:
                # Every rename is told to everyone: a muted user must not
                # speak through nicknames instead.
                self.factory.metrics.moderation_refusals.labels("muted").inc()
                wait = _seconds(_left(mute, self.factory.now_ms()))
                refused = messages.change_refused(old, name, "Muted", mute.reason)
                refused["retry_after"] = wait
                raise Refused(refused)
            renamed = self._take(
                name, lambda when: self.room.rename(self, name, when, **marked)
            )

            def changed(outcome: tuple[str, Moment]) -> None:
                previous, when = outcome
                self.reply(messages.change_ok(previous, name, when, verified))
                self._note("{old!r} is now {new!r}", old=previous, new=name)

            def refused(reason: str, error: str | None = None) -> Refused:
                return Refused(messages.change_refused(old, name, reason, error))

            self._settle_name(renamed, changed, refused, "ErrorWhenChange")

    def _name_rule(self, name: str) -> str | None:
        """An operator's rule against taking `name` here ("reserved",
        "banned"), or verified nicknames' ("verified": protected, and this
        connection has no token for it; "token": its token is for another
        nickname): refused as v2's NameAlreadyUsed, which every client
        already knows how to show, with the rule as `error`."""
        moderation = self.factory.moderation
        now = self.factory.now_ms()
        if self.identity is None:
            rule = moderation.name_refusal(name, self.room_name, now)
        else:
            rule = moderation.name_refusal(name, self.room_name, now, self.identity)
        if rule == "verified" and self.factory.auth_mode == "off":
            # Nobody can show a token with --auth off: nicknames verified
            # while it was on are everyone's again (and kept, for when it
            # is turned back on).
            rule = None
        if rule is not None:
            self.factory.metrics.moderation_refusals.labels(f"name {rule}").inc()
        return rule

    def _take(
        self, name: str, attempt: Callable[[Moment], Deferred]
    ) -> "Deferred[tuple[Any, Moment]]":
        """Claim or rename (`attempt`, given the moment it is asked at):
        fires with its outcome and that moment. A verified connection that
        finds a guest on its nickname has the guest kicked and asks again
        (_take_from_guest); everyone else gets the room's answer as is."""
        if self.identity is None or self.factory.moderator is None:
            when = self.factory.timestamps.now()
            return attempt(when).addCallback(lambda outcome: (outcome, when))
        return Deferred.fromCoroutine(self._take_from_guest(name, attempt))

    async def _take_from_guest(
        self, name: str, attempt: Callable[[Moment], Deferred]
    ) -> tuple[Any, Moment]:
        """The nickname is this connection's by its token: a holder without
        one (NameTaken.verified False) is kicked through the Moderator, so
        it works across nodes and is audited, and the claim is asked again
        until the name is free, for CLAIM_PATIENCE seconds. Held by a
        verified connection (the same person in another tab), or still
        held when patience runs out: NameTaken, NameAlreadyUsed on the wire.
        All of this is inside the `name` outcome, so the connection's later
        requests still wait for its reply."""
        clock = self.factory.reactor
        deadline = clock.seconds() + CLAIM_PATIENCE
        kicked_at: float | None = None
        while True:
            when = self.factory.timestamps.now()
            try:
                return (await attempt(when), when)
            except NameTaken as taken:
                now = clock.seconds()
                if taken.verified or self._lost or now >= deadline:
                    raise
            if kicked_at is None or now - kicked_at >= KICK_AGAIN:
                kicked_at = now
                self._kick_guest(name)
            await deferLater(clock, CLAIM_RETRY, lambda: None)
            if self._lost:  # a claim now would hold the name for nobody
                raise NameTaken(name)

    def _kick_guest(self, name: str) -> None:
        identity = self.identity
        assert identity is not None
        kicked = maybeDeferred(
            self.factory.moderator.kick,
            "verified " + identity.describe(),
            name,
            self.room_name,
            SQUATTER_KICKED,
        )

        def failed(failure: Failure) -> None:
            refusal = _moderation_refusal(failure)
            if refusal is None:
                self.logger.failure(
                    "fault kicking a guest off {name!r}", failure, name=name
                )
            else:
                self._note(
                    "could not kick a guest off {name!r}: {why}",
                    name=name,
                    why=refusal,
                )

        kicked.addErrback(failed)

    def _mute_on(self, name: str, now: int) -> Any:
        """The mute on this nickname or address in this room, if any. A
        muted connection cannot rename (below), so its nickname's mute
        holds it for as long as the mute lasts."""
        return self.factory.moderation.muted(name, self.address, self.room_name, now)

    def _held(self, name: str, content: object) -> None:
        """Refuse a send an operator's rule holds back: a mute on the
        nickname or address, or the room's slow mode. Either is v2's
        send failure, with an ext reason and when to try again."""
        moderation = self.factory.moderation
        room = self.room_name
        now = self.factory.now_ms()
        mute = self._mute_on(name, now)
        if mute is not None:
            self.factory.metrics.moderation_refusals.labels("muted").inc()
            wait = _seconds(_left(mute, now))
            raise Refused(messages.send_held(name, content, "Muted", wait, mute.reason))
        seconds = moderation.slow_mode(room or "")
        if seconds:
            who = (name_keys(name)[0], self.peer)
            wait = self.factory.slow_mode.wait(
                room or "", who, self.factory.reactor.seconds(), seconds
            )
            if wait:
                self.factory.metrics.moderation_refusals.labels("slow mode").inc()
                why = f"slow mode: one message every {seconds:g} seconds"
                raise Refused(
                    messages.send_held(
                        name, content, "SlowMode", _seconds(wait * 1000), why
                    )
                )

    def _settle_name(
        self,
        outcome: Deferred,
        done: Callable[[Any], None],
        refused: Callable[..., Refused],
        fault: str,
    ) -> None:
        """Reply to a `name` request once the room has decided, holding back
        this connection's later requests until then."""

        def failed(failure: Failure) -> None:
            if failure.check(NameTaken):
                self.refuse("name", refused("NameAlreadyUsed"))
            elif failure.check(RoomError):
                self.refuse("name", refused(fault, str(failure.value)))
            else:
                self.logger.failure(
                    "fault handling name from {peer}", failure, peer=self.peer
                )
                self.refuse("name", refused(fault, _INTERNAL_ERROR))

        outcome.addCallbacks(done, failed)
        self._order.name(outcome)

    def handle_send(self, request: dict[str, Any]) -> None:
        name = self._registered_name("send")
        if "content" not in request:
            raise Refused(messages.not_enough_key("send", "content"))
        content = request["content"]
        if not is_valid_content(content):
            raise Refused(messages.send_refused(name, content, "WrongFormatContent"))
        send_id = request.get("send_id")
        if send_id is not None and not valid_send_id(send_id):
            raise Refused(messages.wrong_argument("send", "send_id"))
        self._per_address(self.factory.sends_per_address, "send")
        self._held(name, content)
        if self.factory.closing:
            raise Refused(
                messages.send_refused(
                    name, content, "ErrorWhenSend", "server shutting down"
                )
            )
        when = self.factory.timestamps.now()
        verified = self.identity is not None
        marked = {"mark": "verified"} if verified else {}
        stored = self.room.post(self, name, content, when, send_id, **marked)
        # Counted only once post returned: one that raised (a bug, answered
        # by _handle) must not leave every later get waiting for it.
        self._order.send_started()

        def durable(posted: Posted) -> None:
            self.reply(
                messages.send_ok(
                    posted.name,
                    posted.content,
                    posted.when,
                    posted.id,
                    send_id,
                    verified,
                )
            )
            self._note(
                "{name!r} posted message {id} ({length} characters)",
                name=name,
                id=posted.id,
                length=len(content),
            )

        def failed(failure: Failure) -> None:
            failure.trap(RoomError)
            reply = messages.send_refused(
                name, content, "ErrorWhenSend", str(failure.value)
            )
            self.refuse("send", Refused(reply))

        stored.addCallbacks(durable, failed)
        stored.addErrback(
            lambda f: self.logger.failure(
                "fault after storing from {peer}", f, peer=self.peer
            )
        )
        stored.addBoth(self._order.send_settled)

    def handle_get(self, request: dict[str, Any]) -> None:
        self._registered_name("get")
        cap = self.factory.history_cap
        limit = request.get("limit")
        if limit is None:
            limit = cap
        elif type(limit) is not int or limit < 1:
            raise Refused(messages.wrong_argument("get", "limit"))
        before = _optional_id(request, "before")
        after = _optional_id(request, "after")
        query = (min(limit, cap), before, after)
        answered = self._order.get(lambda: self._reply_page(query), self._wanted)
        answered.addErrback(self._get_failed, request)

    def _wanted(self) -> bool:
        """Still registered and open: a `get` that waited is still answered."""
        return self.room.name_of(self) is not None and self.can_send

    async def _reply_page(self, query: tuple[int, int | None, int | None]) -> None:
        room = self.room
        try:
            entries, online, verified = await room.page(
                *query, self.factory.limits.max_get_bytes
            )
        except RoomError as e:
            name = room.name_of(self)
            if name is not None:
                reply = messages.get_refused(name, "ErrorWhenGet", str(e))
                self.refuse("get", Refused(reply))
            return
        name = room.name_of(self)
        if name is None:
            return
        when = self.factory.timestamps.now()
        size = sum(map(len, entries))
        self.factory.metrics.request("get", "ok")

        def frame() -> PreparedMessage:
            return self.factory.prepareMessage(
                messages.get_ok(name, when, entries, online, verified)
            )

        if size < LARGE_REPLY:
            self._write_now(frame())  # ahead of what was held
            return
        gate = self.factory.reply_gate
        key = self.address_key or ""
        share = await gate.acquire(size, key)
        try:
            if self.can_send:
                self._write_now(await deferToThread(frame))  # ahead of the held
        finally:
            self._hold_share_until_read(share, key)

    def _hold_share_until_read(self, share: int, key: str) -> None:
        """Give the gate its share back once this client has read the reply.

        A client that reads, however slowly, keeps it; one that stops
        reading is cut off (chatbox.wire.backpressure.READ_GRACE), so a
        client that asks and never reads cannot keep its share."""

        reading = self._output.read_or_too_slow(
            self.factory.reactor, share, self._stopped_reading
        )
        reading.addBoth(lambda _: self.factory.reply_gate.release(share, key))

    # -- WebSocket pings behind a large reply --
    #
    # Private hooks: Autobahn's automatic pings drop a client that does not
    # answer within --ws-ping-timeout, but a client reading a large reply
    # slowly cannot see a ping queued behind it. These two overrides keep
    # such a client. They rely on Autobahn scheduling its pings by calling
    # `self._sendAutoPing()` (no arguments) and its timeout by calling
    # `self.onAutoPingTimeout()`; on the state it keeps in
    # autoPingTimeoutCall, autoPingPending and autoPingPendingCall; and on
    # the factory's `_batched_timer.call_later(delay, function)`, the timer
    # Autobahn itself schedules pings with.

    def _sendAutoPing(self) -> None:
        """Autobahn's private ping sender: note how much was queued ahead of
        the ping, which the client must read before it can see it, how much
        it had been sent, and the ping's own size."""
        queued, written = self._output.queued(), self._written
        super()._sendAutoPing()
        self._at_ping = (queued, written, self._written - written)

    def onAutoPingTimeout(self) -> None:
        """A client still reading a large reply cannot answer a ping queued
        behind it: while it keeps taking bytes it is alive, and the next ping
        is simply scheduled (as Autobahn does when other data arrives instead
        of a pong). What it took is what it was sent since the ping less what
        the queue grew by: in a busy room the queue may grow while it reads,
        and how far behind it may fall is --max-pending-output's to judge.
        The ping itself does not count: a peer's kernel takes it whether or
        not anything is there to answer."""
        queued = self._output.queued()
        at_ping = getattr(self, "_at_ping", None)
        taken = 0
        if queued is not None and at_ping is not None and at_ping[0] is not None:
            queued_then, written_then, ping = at_ping
            taken = (self._written - written_then) - (queued - queued_then) - ping
        if taken > 0:
            self.autoPingTimeoutCall = None
            self.autoPingPending = None
            self.autoPingPendingCall = self.factory._batched_timer.call_later(
                self.autoPingInterval, self._sendAutoPing
            )
            return
        super().onAutoPingTimeout()

    def _get_failed(self, failure: Failure, request: dict[str, Any]) -> None:
        self.logger.failure("fault answering get from {peer}", failure, peer=self.peer)
        if self.room.name_of(self) is not None:
            self.reply(self._fault("get", request, _INTERNAL_ERROR))

    def handle_typing(self, request: dict[str, Any]) -> None:
        """ext: a hint, so it is never answered when it works, and extra
        ones are dropped instead of refused: a client typing steadily must
        never see a RateLimited it did not cause by sending."""
        name = self._registered_name("typing")
        now = self.factory.reactor.seconds()
        if now < self._typing_quiet_until:
            return
        if self._mute_on(name, self.factory.now_ms()) is not None:
            return  # a muted user's hints would be noise with no message after
        self._typing_quiet_until = now + TYPING_INTERVAL
        key = self.address_key
        if key is not None and not self.factory.typing_per_address.take(key, now):
            return  # one address's many connections, each within its own
        self.room.typing(self, name, self.factory.timestamps.now())
        self.factory.metrics.request("typing", "ok")

    def handle_online(self, request: dict[str, Any]) -> None:
        """ext: the count a welcome screen shows, before joining; a count
        only, since who is there is for those who joined."""
        counted = self.room.online_count()

        def answer(count: int) -> None:
            if self.can_send:
                self.reply(messages.online_count(count))

        def failed(failure: Failure) -> None:
            failure.trap(RoomError)
            reply = messages.fault("online", None, request, str(failure.value))
            self.refuse("online", Refused(reply))

        counted.addCallbacks(answer, failed)

    # -- verified nicknames and moderators (ext) --

    def handle_auth(self, request: dict[str, Any]) -> None:
        """ext: show a token before `name` (a client that cannot put it in
        the URL). Good: the connection has its Identity, replacing one from
        the handshake. Refused: it keeps what it had (a guest stays a
        guest). Rate limited as any request and, per address, as `name`;
        refusals are counted, not logged one by one."""
        if self.factory.auth_mode == "off":
            raise Refused(
                messages.auth_refused(
                    "AuthDisabled", "this server does not use sign-in tokens"
                )
            )
        if self.room.name_of(self) is not None:
            raise Refused(
                messages.auth_refused(
                    "AlreadyRegistered",
                    "a token is shown before choosing a nickname",
                )
            )
        if "token" not in request:
            raise Refused(messages.not_enough_key("auth", "token"))
        token = request["token"]
        if not isinstance(token, str):
            raise Refused(messages.auth_refused("TokenMalformed", "a token is text"))
        # Checking a signature costs far more than answering most requests:
        # one address's tokens share its registrations' budget, whatever
        # number of connections it spreads them over.
        self._per_address(self.factory.names_per_address, "auth")
        try:
            identity = self._verify(token, self.room_name or "")
        except TokenRefused as refused:
            raise Refused(
                messages.auth_refused(refused.reason, refused.error)
            ) from None
        self.identity = identity
        self._vouched(identity)

    def handle_moderate(self, request: dict[str, Any]) -> None:
        """ext: a moderator's action in this connection's own room, through
        the same Moderator as the admin API, so it is checked, audited and
        counted alike, and reaches every node."""
        self._registered_name("moderate")
        action = request.get("action")
        identity = self.identity
        room = self.room_name or ""
        if identity is None or not identity.moderates(room, self.factory.now_ms()):
            raise Refused(
                messages.moderate_refused(
                    action, "NotModerator", moderating.not_moderator(identity, room)
                )
            )
        if action not in moderating.ACTIONS:
            raise Refused(
                messages.moderate_refused(action, "WrongFormatArgument", field="action")
            )
        if self.factory.moderator is None:
            raise Refused(
                messages.moderate_refused(
                    action, "ErrorWhenModerate", "moderation is off on this server"
                )
            )
        done = Deferred.fromCoroutine(moderating.carry_out(self, request, action))

        def failed(failure: Failure) -> None:
            if failure.check(Refused):
                self.refuse("moderate", failure.value)
                return
            refusal = _moderation_refusal(failure)
            if refusal is not None:
                reply = messages.moderate_refused(action, "Refused", refusal)
                self.refuse("moderate", Refused(reply))
                return
            self.logger.failure(
                "fault carrying out {action} from {peer}",
                failure,
                action=action,
                peer=self.peer,
            )
            reply = messages.moderate_refused(
                action, "ErrorWhenModerate", _INTERNAL_ERROR
            )
            self.refuse("moderate", Refused(reply))

        done.addCallbacks(self.reply, failed)

    _handlers = {
        "name": handle_name,
        "send": handle_send,
        "get": handle_get,
        "typing": handle_typing,
        "online": handle_online,
        "auth": handle_auth,
        "moderate": handle_moderate,
    }
