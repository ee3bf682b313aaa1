"""Moderators' requests (ext `moderate`): what each action asks, checked here,
carried out by the same Moderator the admin API calls (`factory.moderator`),
so a moderator's action is checked, audited, counted and reaches every node
exactly as an operator's does.

ChatProtocol.handle_moderate decides whether the connection may moderate at
all and turns the outcome into its reply; each action below reads its
fields, refuses what it may not do (raising `Refused`) and returns the
success reply. docs/PROTOCOL.md, "Verified nicknames (ext)", is the contract.
"""

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from chatbox.auth.identity import MODERATOR, Identity
from chatbox.chat.arns import is_valid_name, name_keys
from chatbox.chat.moderation import MAX_REASON, MAX_SLOW_SECONDS, MODERATOR_BY
from chatbox.wire import messages
from chatbox.wire.messages import Message, Refused

if TYPE_CHECKING:
    from chatbox.wire.protocol import ChatProtocol

__all__ = ["ACTIONS", "carry_out", "not_moderator"]

MAX_DELETE_IDS = 100
MAX_MUTE_SECONDS = 7 * 24 * 3600


def not_moderator(identity: Identity | None, room: str) -> str:
    """Why this connection may not moderate here, for its user."""
    if identity is None or MODERATOR not in identity.roles:
        return "only a moderator can do this"
    if not identity.covers(room):
        return "you are not a moderator of this room"
    return "your moderator token has expired"


async def carry_out(
    connection: "ChatProtocol", request: dict[str, Any], action: str
) -> Message:
    """The success reply to `action`, one of ACTIONS, from a connection
    already known to moderate its room; raises Refused, or what the
    Moderator raises (ModerationError for what the rules refuse)."""
    return await ACTIONS[action](connection, request, action)


def _operator(connection: "ChatProtocol") -> str:
    """Who the audit line names."""
    assert connection.identity is not None
    return MODERATOR_BY + connection.identity.describe()


def _room(connection: "ChatProtocol") -> str:
    return connection.room_name or ""


def _number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _field_refused(action: str, field: str) -> Refused:
    return Refused(
        messages.moderate_refused(action, "WrongFormatArgument", field=field)
    )


def _refused(action: str, reason: str, why: str) -> Refused:
    return Refused(messages.moderate_refused(action, reason, why))


def _reason_of(request: dict[str, Any], action: str) -> str:
    reason = request.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise _field_refused(action, "reason")
    return reason


def _target_of(request: dict[str, Any], action: str) -> str:
    name = request.get("name")
    if not isinstance(name, str) or not is_valid_name(name):
        raise _field_refused(action, "name")
    return name


def _may_act_on(connection: "ChatProtocol", target: str, action: str) -> None:
    """A moderator may not kick or mute itself, the announcer, or a
    verified moderator of the room. That last is known of this process's
    connections only: a moderator connected to another node of a cluster
    is not seen here."""
    keys = set(name_keys(target))
    room = connection.room
    own = room.name_of(connection)
    if own is not None and keys.intersection(name_keys(own)):
        raise _refused(action, "Refused", f"a moderator cannot {action} itself")
    if keys.intersection(name_keys(connection.factory.moderation.announcer)):
        raise _refused(action, "Refused", f"the announcer cannot be {action}d")
    now = connection.factory.now_ms()
    for other in room.audience():
        identity = getattr(other, "identity", None)
        held = room.name_of(other)
        if (
            identity is not None
            and held is not None
            and identity.moderates(_room(connection), now)
            and keys.intersection(name_keys(held))
        ):
            raise _refused(action, "Refused", f"{held!r} is a moderator of this room")


async def _holds(connection: "ChatProtocol", target: str) -> bool:
    """Someone holds `target` (or a name the same for ARNS) in this room,
    on any node: the room's online list is the whole chat's."""
    page = await connection.room.page(1, None, None, 0)
    keys = set(name_keys(target))
    return any(keys.intersection(name_keys(name)) for name in page.online)


async def _delete(
    connection: "ChatProtocol", request: dict[str, Any], action: str
) -> Message:
    ids = request.get("ids")
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= MAX_DELETE_IDS
        or any(type(i) is not int or i < 1 for i in ids)
    ):
        raise _field_refused(action, "ids")
    reason = _reason_of(request, action)
    removed = await connection.factory.moderator.delete(
        _operator(connection), _room(connection), ids, reason
    )
    return messages.moderate_ok(action, ids=removed)


async def _kick(
    connection: "ChatProtocol", request: dict[str, Any], action: str
) -> Message:
    target = _target_of(request, action)
    reason = _reason_of(request, action)
    _may_act_on(connection, target, action)
    if not await _holds(connection, target):
        raise _refused(action, "NoSuchUser", f"nobody is {target!r} in this room")
    await connection.factory.moderator.kick(
        _operator(connection), target, _room(connection), reason
    )
    return messages.moderate_ok(action, name=target)


async def _mute(
    connection: "ChatProtocol", request: dict[str, Any], action: str
) -> Message:
    target = _target_of(request, action)
    seconds = request.get("seconds")
    if not _number(seconds) or not 1 <= seconds <= MAX_MUTE_SECONDS:
        raise _field_refused(action, "seconds")
    reason = _reason_of(request, action)
    _may_act_on(connection, target, action)
    if not await _holds(connection, target):
        # Someone here now: a moderator answers what happens in the room,
        # and cannot stockpile mutes on names nobody holds.
        raise _refused(action, "NoSuchUser", f"nobody is {target!r} in this room")
    # (How many mutes moderators may have in force is the rules' to say:
    # chatbox.chat.moderation.MAX_ROOM_MODERATOR_MUTES.)
    made = await connection.factory.moderator.sanction(
        _operator(connection),
        "mute",
        "name",
        target,
        reason,
        seconds,
        _room(connection),
        False,
        connection.address or "",
    )
    return messages.moderate_ok(action, name=target, until=made["expires"])


async def _unmute(
    connection: "ChatProtocol", request: dict[str, Any], action: str
) -> Message:
    """Lifts this room's mutes on the nickname (the Moderator's `unmute`: a
    mute on every room is the operator's to lift)."""
    target = _target_of(request, action)
    lifted = await connection.factory.moderator.unmute(
        _operator(connection), target, _room(connection)
    )
    if not lifted:
        raise _refused(action, "NoSuchUser", f"{target!r} is not muted in this room")
    return messages.moderate_ok(action, name=target)


async def _slow(
    connection: "ChatProtocol", request: dict[str, Any], action: str
) -> Message:
    seconds = request.get("seconds")
    if not _number(seconds) or not 0 <= seconds <= MAX_SLOW_SECONDS:
        raise _field_refused(action, "seconds")
    await connection.factory.moderator.set_slow_mode(
        _operator(connection), _room(connection), seconds
    )
    return messages.moderate_ok(action, seconds=seconds)


Action = Callable[["ChatProtocol", dict[str, Any], str], Awaitable[Message]]
ACTIONS: dict[str, Action] = {
    "delete": _delete,
    "kick": _kick,
    "mute": _mute,
    "unmute": _unmute,
    "slow": _slow,
}
