"""Every JSON shape chatbox puts on the wire, each made by one function.

docs/PROTOCOL.md is the contract; the names here follow its sections. Field
names and types are v2's exactly, including the `username` key of the two
send-failure replies and `"type": null` for UnknownType. Extensions only add
fields (`id`, `time`, `send_id`), reasons, requests and event types, never
rename or retype a v2 field.

Every shape with v2's `timestamp` takes a `Moment`, so `time`, the same
instant in epoch milliseconds, is beside it wherever it is.
"""

from typing import Any

from chatbox.wire import codec
from chatbox.wire.clock import Moment

__all__ = [
    "MARKS",
    "Refused",
    "auth_ok",
    "auth_refused",
    "change_ok",
    "change_refused",
    "deleted",
    "fault",
    "get_ok",
    "get_refused",
    "history_entry",
    "joined",
    "left",
    "moderate_ok",
    "moderate_refused",
    "moderation_notice",
    "not_enough_key",
    "online_count",
    "ping",
    "posted",
    "rate_limited",
    "register_ok",
    "register_refused",
    "renamed",
    "send_held",
    "send_ok",
    "send_refused",
    "slow_mode",
    "typing",
    "unknown_register",
    "unknown_type",
    "wrong_argument",
    "wrong_format_json",
]

Message = dict[str, Any]

# ext: what a stored message may be marked as, beside its v2 fields. Each is
# a key set to true on its history entry and `message` event (absent
# otherwise): an operator's announcement, or a message from a verified
# nickname (docs/PROTOCOL.md, "Verified nicknames").
MARKS = ("announcement", "verified")


def _marked(shape: Message, mark: str | None) -> Message:
    if mark is not None:
        assert mark in MARKS, mark
        shape[mark] = True
    return shape


def _verified(shape: Message, verified: bool) -> Message:
    """ext: a verified nickname's replies and events say so; others carry
    nothing new (never `"verified": false`), so v2 sees v2's shapes."""
    if verified:
        shape["verified"] = True
    return shape


class Refused(Exception):
    """A request that gets a `status: false` reply instead of being applied."""

    def __init__(self, reply: Message) -> None:
        super().__init__(reply["reason"])
        self.reply = reply

    @property
    def reason(self) -> str:
        return self.reply["reason"]


def _with_error(reply: Message, error: str | None) -> Message:
    if error is not None:
        reply["error"] = error
    return reply


# -- name -------------------------------------------------------------------


def register_ok(name: str, when: Moment, verified: bool = False) -> Message:
    reply = {
        "type": "name",
        "action": "register",
        "name": name,
        "status": True,
        "timestamp": when.text,
        "time": when.millis,
    }
    return _verified(reply, verified)


def register_refused(name: Any, reason: str, error: str | None = None) -> Message:
    reply = {
        "type": "name",
        "action": "register",
        "name": name,
        "status": False,
        "reason": reason,
    }
    return _with_error(reply, error)


def change_ok(old: str, new: str, when: Moment, verified: bool = False) -> Message:
    reply = {
        "type": "name",
        "action": "change",
        "oldname": old,
        "newname": new,
        "status": True,
        "timestamp": when.text,
        "time": when.millis,
    }
    return _verified(reply, verified)


def change_refused(
    old: str, new: Any, reason: str, error: str | None = None
) -> Message:
    reply = {
        "type": "name",
        "action": "change",
        "oldname": old,
        "newname": new,
        "status": False,
        "reason": reason,
    }
    return _with_error(reply, error)


# -- send -------------------------------------------------------------------


def send_ok(
    name: str,
    content: str,
    when: Moment,
    message_id: int,
    send_id: str | None,
    verified: bool = False,
) -> Message:
    reply = {
        "type": "send",
        "name": name,
        "content": content,
        "status": True,
        "timestamp": when.text,
        "time": when.millis,
        "id": message_id,
    }
    if send_id is not None:
        reply["send_id"] = send_id
    return _verified(reply, verified)


def send_refused(
    name: str, content: Any, reason: str, error: str | None = None
) -> Message:
    # v2 really uses `username` here, unlike every other reply.
    reply = {
        "type": "send",
        "username": name,
        "content": content,
        "status": False,
        "reason": reason,
    }
    return _with_error(reply, error)


def send_held(
    name: str, content: Any, reason: str, retry_after: float, error: str | None
) -> Message:
    """ext: a send refused for a while (`Muted`, `SlowMode`): v2's failure
    shape, so a v2 client sees `status: false`, and when to try again."""
    reply = send_refused(name, content, reason, error)
    reply["retry_after"] = retry_after
    return reply


# -- get --------------------------------------------------------------------


def history_entry(
    message_id: int,
    name: str,
    content: str,
    timestamp: str,
    millis: int | None,
    mark: str | None = None,
) -> Message:
    """One stored message, as kept in data.json and sent in `get`. `millis`
    is None only for an entry whose v2 timestamp could not be read. An
    operator's announcement or a verified nickname's message (ext, MARKS)
    says so, for clients that set it apart."""
    entry = {"id": message_id, "name": name, "content": content}
    entry["timestamp"] = timestamp
    if millis is not None:
        entry["time"] = millis
    return _marked(entry, mark)


def get_ok(
    name: str,
    when: Moment,
    entries: list[bytes],
    online: list[str],
    verified: list[str] | None = None,
) -> bytes:
    """The `get` reply, already encoded.

    History entries are kept encoded, so the reply is spliced from them
    instead of decoding and re-encoding up to the whole history cap.
    `verified` (ext) is the online nicknames that are verified, in `online`
    order; absent when there are none, as a v2 reply.
    """
    head = codec.encode(
        {
            "type": "get",
            "status": True,
            "name": name,
            "timestamp": when.text,
            "time": when.millis,
        }
    )
    return b"".join(
        (
            head[:-1],
            b',"data":{"message":[',
            b",".join(entries),
            b'],"online":',
            codec.encode(online),
            b',"verified":' + codec.encode(verified) if verified else b"",
            b"}}",
        )
    )


def get_refused(name: str, reason: str, error: str | None = None) -> Message:
    return _with_error(
        {"type": "get", "name": name, "status": False, "reason": reason}, error
    )


# -- refusals shared by every request type ------------------------------------


def fault(
    request_type: object, name: str | None, request: Message, error: str
) -> Message:
    """The `ErrorWhen...` reply for a request the server failed to carry out,
    shaped as that request type's own failure replies; `name` is the
    requester's nickname (None: not registered). The ext requests, which v2
    clients never send, get `ServerError`."""
    if request_type == "name":
        if name is None:
            return register_refused(request.get("name"), "ErrorWhenRegister", error)
        return change_refused(name, request.get("name"), "ErrorWhenChange", error)
    if request_type == "send":
        return send_refused(name, request.get("content"), "ErrorWhenSend", error)
    if request_type == "get":
        return get_refused(name, "ErrorWhenGet", error)
    return _with_error(
        {"type": request_type, "status": False, "reason": "ServerError"}, error
    )


def unknown_register(request_type: str) -> Message:
    return {"type": request_type, "status": False, "reason": "UnknownRegister"}


def not_enough_key(request_type: str, need: str) -> Message:
    return {
        "type": request_type,
        "status": False,
        "reason": "NotEnoughKey",
        "need": need,
    }


def wrong_argument(request_type: str, field: str) -> Message:
    """ext: an optional field (such as `limit` of `get`) has a bad value."""
    return {
        "type": request_type,
        "status": False,
        "reason": "WrongFormatArgument",
        "field": field,
    }


def rate_limited(request_type: str | None, retry_after: float) -> Message:
    """ext: the connection sent faster than allowed; nothing was applied."""
    return {
        "type": request_type,
        "status": False,
        "reason": "RateLimited",
        "retry_after": retry_after,
    }


def wrong_format_json() -> Message:
    return {"status": False, "reason": "WrongFormatJSON"}


def unknown_type() -> Message:
    return {"type": None, "status": False, "reason": "UnknownType"}


# -- events to everyone else ----------------------------------------------------


def joined(name: str, when: Moment, verified: bool = False) -> Message:
    event = {
        "type": "receive",
        "datatype": "register",
        "name": name,
        "timestamp": when.text,
        "time": when.millis,
    }
    return _verified(event, verified)


def renamed(old: str, new: str, when: Moment, verified: bool = False) -> Message:
    event = {
        "type": "receive",
        "datatype": "change",
        "oldname": old,
        "newname": new,
        "timestamp": when.text,
        "time": when.millis,
    }
    return _verified(event, verified)


def posted(
    name: str, content: str, when: Moment, message_id: int, mark: str | None = None
) -> Message:
    event = {
        "type": "receive",
        "datatype": "message",
        "name": name,
        "content": content,
        "timestamp": when.text,
        "time": when.millis,
        "id": message_id,
    }
    return _marked(event, mark)


def left(name: str, when: Moment) -> Message:
    return {
        "type": "receive",
        "datatype": "leave",
        "name": name,
        "timestamp": when.text,
        "time": when.millis,
    }


def deleted(ids: list[int], when: Moment) -> Message:
    """ext: an operator removed these messages; a client that understands it
    takes them off the screen (v2 clients ignore the datatype)."""
    return {
        "type": "receive",
        "datatype": "delete",
        "ids": ids,
        "timestamp": when.text,
        "time": when.millis,
    }


def slow_mode(seconds: float, when: Moment) -> Message:
    """ext: slow mode began (one message every `seconds` per person) or,
    with 0, ended in this room, so a client stops counting down a wait the
    server no longer holds it to (v2 clients ignore the datatype)."""
    return {
        "type": "receive",
        "datatype": "slowmode",
        "seconds": seconds,
        "timestamp": when.text,
        "time": when.millis,
    }


def moderation_notice(action: str, reason: str, until: int | None) -> Message:
    """ext: to the one connection an operator acted on (`kick`, `ban`, just
    before its close; `mute`, `unmute`), so its user learns why and until
    when (epoch ms; None: no end)."""
    return {"type": "moderation", "action": action, "reason": reason, "until": until}


def typing(name: str) -> Message:
    """ext: `name` is typing. No timestamp: it is never stored, and is
    stale within seconds."""
    return {"type": "receive", "datatype": "typing", "name": name}


def online_count(count: int) -> Message:
    """ext: how many are in the chat, for a client that has not joined."""
    return {"type": "online", "status": True, "count": count}


def ping(timeout: float) -> Message:
    """v2 sends `"timeout": 5`, an integer; whole seconds stay integers."""
    whole = int(timeout)
    return {"type": "ping", "timeout": whole if whole == timeout else timeout}


# -- verified nicknames and moderators (ext) ------------------------------------


def auth_ok(
    name: str,
    roles: list[str],
    rooms: list[str] | None,
    expires: int,
) -> Message:
    """ext: the token this connection presented (in the handshake, or by an
    `auth` request) vouches for `name`: the only nickname it may take, in
    `rooms` (None: every room), with `roles`, until `expires` (epoch ms)."""
    return {
        "type": "auth",
        "status": True,
        "name": name,
        "roles": roles,
        "rooms": rooms,
        "expires": expires,
    }


def auth_refused(reason: str, error: str) -> Message:
    """ext: a token refused (chatbox.auth.identity.REASONS), or an `auth`
    request this server or connection cannot take (`AuthDisabled`,
    `AlreadyRegistered`); `error` is a sentence for the user."""
    return {"type": "auth", "status": False, "reason": reason, "error": error}


def moderate_ok(action: str, **outcome: Any) -> Message:
    """ext: a moderator's action was carried out; `outcome` says what came
    of it (`ids` deleted, `name`, `until`, `seconds`)."""
    return {"type": "moderate", "action": action, "status": True, **outcome}


def moderate_refused(
    action: object,
    reason: str,
    error: str | None = None,
    field: str | None = None,
) -> Message:
    """ext: a moderator action not carried out: `NotModerator`,
    `WrongFormatArgument` (with `field`), `NoSuchUser`, `Refused` (with the
    reason the moderation rules gave), or `ErrorWhenModerate`."""
    reply = {"type": "moderate", "action": action, "status": False, "reason": reason}
    if field is not None:
        reply["field"] = field
    return _with_error(reply, error)
