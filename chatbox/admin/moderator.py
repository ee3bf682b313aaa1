"""What an operator's action does, on one process or a whole cluster.

The admin API (chatbox.admin.api) and, later, moderators inside the chat
call a `Moderator` and nothing else of the server. It checks the request,
turns it into an order for the rules (chatbox.chat.moderation) or a call on
a room (chatbox.chat.room's `delete`, `post`), writes the audit line and
counts the action.

Verified nicknames (issue 15) are rules too: `verify` protects a nickname
in some rooms, `mint` signs a token for one with the server's own secret
and protects it, `unverify` frees it. Applying a `verify` on each process
kicks that process's guests holding the nickname (they have no token for
it), so a protection is in force at once, everywhere.

Orders travel through the moderation store, which hands each one back to
`_on_order` on every process of a cluster (this one included): that is
where the rules change and where this process acts on its own connections
(closing a kicked or banned user's, telling a muted one). So a kick or a
ban issued on one node reaches a user connected to any node, and the node
holding the connection is the one that closes it.
"""

import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatbox.chat.arns import is_valid_name, name_keys
from chatbox.chat.content import is_valid_content
from chatbox.chat.moderation import (
    MAX_REASON,
    MAX_VERIFIED,
    IModerationStore,
    Moderation,
    ModerationError,
    Order,
    OrderError,
    Protection,
    Sanction,
    address_of,
    network_of,
)
from chatbox.chat.room import IRoom, RoomError
from chatbox.chat.roomnames import DEFAULT, NotARoom, check_name
from chatbox.chat.rooms import RoomRefused, Rooms
from chatbox.logsafe import printable
from chatbox.metrics import Metrics
from chatbox.wire import codec, messages
from chatbox.wire.factory import ChatFactory

__all__ = [
    "CLOSE_BANNED",
    "CLOSE_KICKED",
    "VERIFIED_KICK",
    "ModerationError",
    "Moderator",
]

CLOSE_KICKED = 4001
CLOSE_BANNED = 4003
# Narrower than these, a ban is refused unless forced: 0.0.0.0/0 is everyone.
WIDEST_IPV4, WIDEST_IPV6 = 8, 16
# What one IPv6 subscriber is given (chatbox.limits.address_key counts so).
IPV6_SUBSCRIBER = 64
# Ten years: longer is "never", which is said by leaving the duration out.
MAX_DURATION = 10 * 365 * 24 * 3600
# What a guest holding a nickname that became verified is told as it goes.
VERIFIED_KICK = "this nickname belongs to a verified user"
NO_SECRET = "this server has no --auth-secret to sign tokens with"
# A minted token's life in days (chatbox.auth.minting takes the same).
MIN_DAYS, MAX_DAYS = 1, 366


# The keys of the nicknames connections hold, for the scans a kick, a ban
# or a verify order makes of this process's connections: skeletons cost
# microseconds each, and a class starting with tokens is a verify order per
# teacher, each scanning every connection.
_held_keys = functools.lru_cache(maxsize=16_384)(name_keys)


def _room(room: str | None) -> str | None:
    if room is None or room == DEFAULT:
        return room
    try:
        return check_name(room)
    except NotARoom as e:
        raise ModerationError(400, f"not a room: {e}") from None


def _stamp(millis: int | None) -> str:
    if millis is None:
        return "any time"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(millis / 1000))


def _reason(reason: object) -> str:
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise ModerationError(
            400, f"a reason is text of at most {MAX_REASON} characters"
        )
    return reason


def _deferred(method: Callable[..., Any]) -> Callable[..., Deferred]:
    """An action written as a coroutine, returned as the Deferred the
    admin API (a twisted.web resource) waits on."""

    @functools.wraps(method)
    def action(*args: Any, **kwargs: Any) -> Deferred:
        return Deferred.fromCoroutine(method(*args, **kwargs))

    return action


class Moderator:
    audit = Logger(namespace="chatbox.audit")

    def __init__(
        self,
        moderation: Moderation,
        store: IModerationStore,
        factory: ChatFactory,
        rooms: Rooms,
        seconds: Callable[[], float],
        metrics: Metrics,
    ) -> None:
        self.moderation = moderation
        self.store = store
        self.factory = factory
        self.rooms = rooms
        self._seconds = seconds
        self.metrics = metrics
        # The stored rules first, then every order after them. One process's
        # file is read before anything listens, so a damaged one stops
        # start-up here; a cluster's snapshot comes from Redis.
        loaded = store.load()
        loaded.addCallback(self.restore)
        loaded.addCallback(lambda _: store.start(self._on_order))
        failed: list[Failure] = []
        loaded.addErrback(failed.append)
        if failed:
            failed[0].raiseException()

    @property
    def auth_secret(self) -> bytes | None:
        """The key `mint` signs with: --auth-secret's bytes as the
        factory's verifier holds them now (SIGHUP may have reread them);
        None when there is none, and so no minting."""
        verifier = self.factory.verifier
        return None if verifier is None else verifier.secret

    def _now(self) -> int:
        return int(self._seconds() * 1000)

    def _room(self, room: str | None) -> str | None:
        """A room an action may name: one this server can have. A typo
        must not leave the operator believing a rule is in force."""
        checked = _room(room)
        if checked is None or checked == DEFAULT:
            return checked
        rooms = self.rooms
        if not rooms.named:
            raise ModerationError(404, "this server has no named rooms (--rooms)")
        if not rooms.policy.open and checked not in rooms.policy.names:
            raise ModerationError(404, f"no room {checked!r} (not in --rooms)")
        return checked

    def _audit(self, operator: str, action: str, target: str, reason: str = "") -> None:
        self.metrics.moderation_actions.labels(action).inc()
        self.audit.info(
            "audit: {operator} {action} {target} reason={reason}",
            operator=printable(operator, 100),
            action=action,
            target=printable(target, 200),
            reason=printable(reason, MAX_REASON),
        )

    async def _submit(self, order: Order) -> None:
        self.moderation.prune(self._now())  # the stored rules stay the live ones
        try:
            await self.store.submit(order)
        except OrderError as e:
            raise ModerationError(400, str(e)) from None
        except (OSError, RoomError) as e:
            raise ModerationError(503, f"could not keep it: {e}") from None

    # -- who is here --

    def _connections(self, room: str | None) -> Iterable[Any]:
        for connection in list(self.factory.connections):
            if connection.room_name is None:
                continue
            if room is not None and connection.room_name != room:
                continue
            yield connection

    def users(self, room: str | None) -> list[dict[str, Any]]:
        room = self._room(room)
        found = []
        for connection in self._connections(room):
            name = connection.room.name_of(connection)
            if name is not None:
                found.append(
                    {
                        "room": connection.room_name,
                        "name": name,
                        "address": connection.address,
                    }
                )
        return found

    # -- orders: kick, ban, mute, slow mode, reserved names --

    @_deferred
    async def kick(
        self, operator: str, name: str, room: str | None, reason: str
    ) -> int:
        if not is_valid_name(name):
            raise ModerationError(400, "not a nickname")
        room = self._room(room)
        reason = _reason(reason)
        here = len(self._holders(name_keys(name), room))
        await self._submit(
            {"op": "kick", "name": name, "room": room, "reason": reason, "by": operator}
        )
        self._audit(operator, "kick", f"{name!r} in {self._where(room)}", reason)
        return here

    @_deferred
    async def sanction(
        self,
        operator: str,
        kind: str,
        target: str,
        value: str,
        reason: str,
        duration: float | None,
        room: str | None,
        force: bool,
        client_address: str,
    ) -> dict[str, Any]:
        room = self._room(room)
        reason = _reason(reason)
        if duration is not None and not 0 < duration <= MAX_DURATION:
            raise ModerationError(400, "a duration is 1 second to 10 years")
        if kind == "mute" and duration is None:
            raise ModerationError(400, "a mute needs a duration")
        if target == "address":
            try:
                network = network_of(value)
            except OrderError as e:
                raise ModerationError(400, str(e)) from None
            if network.version == 6 and network.prefixlen > IPV6_SUBSCRIBER:
                # One IPv6 subscriber holds a whole /64, as every
                # per-address limit counts it: a ban on one of its
                # addresses would be escaped by taking the next.
                network = network.supernet(new_prefix=IPV6_SUBSCRIBER)
            value = (
                str(network)
                if network.num_addresses > 1
                else str(network.network_address)
            )
            if kind == "ban" and not force:
                self._refuse_wide(network, client_address)
        elif target == "name":
            if not is_valid_name(value):
                raise ModerationError(400, "not a nickname")
        else:
            raise ModerationError(400, "a sanction is on a name or an address")
        now = self._now()
        expires = None if duration is None else now + int(duration * 1000)
        try:
            made = Sanction.new(
                kind, target, value, reason, operator, now, expires, room
            )
        except OrderError as e:
            raise ModerationError(400, str(e)) from None
        # The same rule again replaces the one in force (a ban made longer,
        # a new reason) rather than piling up under the cap.
        for old in self.moderation.same(kind, target, value, room):
            await self._submit({"op": "lift", "id": old.id, "by": operator})
        await self._submit({"op": "sanction", "sanction": made.to_dict()})
        until = "for good" if expires is None else f"for {duration:g} s"
        self._audit(
            operator,
            kind,
            f"{target} {value!r} in {self._where(room)} {until} ({made.id})",
            reason,
        )
        return made.to_dict()

    def _refuse_wide(self, network: Any, client_address: str) -> None:
        widest = WIDEST_IPV4 if network.version == 4 else WIDEST_IPV6
        if network.prefixlen < widest:
            raise ModerationError(
                409,
                f"{network} covers more than a /{widest}, perhaps everyone; "
                "add --force (force: true) to ban it anyway",
            )
        try:
            own = network_of(client_address).network_address
        except OrderError:
            return
        if own.version == network.version and own in network:
            raise ModerationError(
                409,
                f"{network} includes this admin client's own address "
                f"({client_address}); add --force (force: true) to ban it anyway",
            )

    def sanctions(self, kind: str) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.moderation.sanctions(kind, self._now())]

    @_deferred
    async def lift(self, operator: str, kind: str, sanction_id: str) -> dict:
        found = self.moderation.get(sanction_id)
        if found is None or found.kind != kind or not found.active(self._now()):
            raise ModerationError(404, f"no {kind} {sanction_id!r}")
        await self._submit({"op": "lift", "id": sanction_id, "by": operator})
        self._audit(
            operator, f"un{kind}", f"{found.target} {found.value!r} ({found.id})"
        )
        return found.to_dict()

    def slow_modes(self) -> dict[str, float]:
        return self.moderation.slow_modes()

    @_deferred
    async def set_slow_mode(self, operator: str, room: str, seconds: float) -> None:
        checked = self._room(room)
        assert checked is not None
        await self._submit(
            {"op": "slow", "room": checked, "seconds": seconds, "by": operator}
        )
        setting = f"{seconds:g} s" if seconds else "off"
        self._audit(operator, "slow-mode", f"{self._where(checked)}: {setting}")

    def reserved(self) -> list[str]:
        return self.moderation.reserved()

    @_deferred
    async def reserve(self, operator: str, pattern: str) -> None:
        await self._submit({"op": "reserve", "pattern": pattern, "by": operator})
        self._audit(operator, "reserve", repr(pattern))

    @_deferred
    async def unreserve(self, operator: str, pattern: str) -> bool:
        if pattern not in self.moderation.reserved():
            return False
        await self._submit({"op": "unreserve", "pattern": pattern, "by": operator})
        self._audit(operator, "unreserve", repr(pattern))
        return True

    # -- verified nicknames --

    def verified_names(self) -> list[dict[str, Any]]:
        return self.moderation.verified()

    @_deferred
    async def verify(
        self, operator: str, name: str, rooms: Iterable[str] | None
    ) -> bool:
        """Protect `name` in `rooms` (None: every room) from everyone
        without a token for it; a protection already there is widened, never
        narrowed. Called when a valid token is first shown, and by `mint`.
        Returns whether anything changed: a token shown again (every
        connect) costs no order once its rooms are covered. Rooms are
        checked for form only: a website's token may name rooms this server
        does not have (yet)."""
        if not is_valid_name(name):
            raise ModerationError(400, "not a nickname")
        if self.moderation.is_announcer(name):
            raise ModerationError(400, "the announcer's name cannot be verified")
        wanted = _protected_rooms(rooms)
        other = self.moderation.look_alike(name)
        if other is not None:
            # A second spelling would stop the first one's owner (and be
            # stopped by it): `Ian` and `Lan` cannot both be verified.
            raise ModerationError(
                409,
                f"{name!r} looks like the verified nickname {other.name!r}; "
                "choose another nickname, or unverify that one first",
            )
        held = self.moderation.protection(name, exact=True)
        if held is None or (
            held is not False and wanted is not None and set(wanted) <= set(held)
        ):
            return False
        if held is False and self.moderation.verified_count() >= MAX_VERIFIED:
            raise ModerationError(
                409,
                f"at most {MAX_VERIFIED} verified nicknames; unverify some first",
            )
        await self._submit(
            {
                "op": "verify",
                "name": name,
                "rooms": wanted,
                "by": operator,
                "at": self._now(),
            }
        )
        self._audit(operator, "verify", f"{name!r} in {_rooms_said(wanted)}")
        return True

    @_deferred
    async def unverify(self, operator: str, name: str) -> bool:
        """Free `name` (and whatever protection a look-alike of it falls
        under); False if it was not verified."""
        if not is_valid_name(name):
            raise ModerationError(400, "not a nickname")
        if self.moderation.protection(name) is False:
            return False
        await self._submit({"op": "unverify", "name": name, "by": operator})
        self._audit(operator, "unverify", repr(name))
        return True

    @_deferred
    async def mint(
        self,
        operator: str,
        name: str,
        roles: list[str] | None,
        rooms: list[str] | None,
        days: int = 30,
    ) -> dict[str, Any]:
        """A token for `name` signed with --auth-secret, and the name
        protected in its rooms from now on (not only once it is first
        used: whoever the operator vouches for is safe at once). The token
        is in the result only; the audit line names its jti."""
        secret = self.auth_secret
        if secret is None:
            raise ModerationError(409, NO_SECRET)
        if not is_valid_name(name):
            raise ModerationError(400, "not a nickname")
        if self.moderation.is_announcer(name):
            raise ModerationError(400, "the announcer's name cannot be verified")
        if roles is not None and (
            not isinstance(roles, list)
            or not all(isinstance(role, str) for role in roles)
        ):
            raise ModerationError(400, "roles is a list of role names")
        if isinstance(days, bool) or not isinstance(days, int):
            raise ModerationError(
                400, f"days is a whole number, {MIN_DAYS} to {MAX_DAYS}"
            )
        if not MIN_DAYS <= days <= MAX_DAYS:
            raise ModerationError(400, f"days is {MIN_DAYS} to {MAX_DAYS}")
        if rooms is not None:
            if not isinstance(rooms, list) or not rooms:
                raise ModerationError(400, "rooms is a list of rooms, or none for all")
            checked = [self._room(room) for room in rooms]
            rooms = sorted({room for room in checked if room is not None})
        # Imported when used: PyJWT is loaded only where a token is signed.
        from chatbox.auth.minting import mint

        try:
            token, identity = mint(secret, name, roles, rooms, days, self._seconds())
        except ValueError as e:  # MintError: what it could not sign
            raise ModerationError(400, str(e)) from None
        await self.verify(operator, name, identity.rooms)
        self._audit(
            operator,
            "mint",
            f"token {identity.token_id} for {name!r} in "
            f"{_rooms_said(identity.rooms)}, roles "
            f"{','.join(sorted(identity.roles)) or 'none'}, "
            f"until {_stamp(identity.expires)}",
        )
        return {
            "token": token,
            "name": identity.name,
            "rooms": None if identity.rooms is None else sorted(identity.rooms),
            "roles": sorted(identity.roles),
            "expires": identity.expires,
        }

    @_deferred
    async def unmute(self, operator: str, name: str, room: str | None) -> int:
        """Lift the mutes on `name` (or a look-alike) made for `room`
        alone: an in-chat moderator's `unmute`, which must not lift a mute
        on every room nor one in a room it does not moderate. Returns how
        many were lifted."""
        if not is_valid_name(name):
            raise ModerationError(400, "not a nickname")
        room = self._room(room)
        found = [
            mute
            for mute in self.moderation.named("mute", name, self._now())
            if mute.room == room
        ]
        for mute in found:
            await self._submit({"op": "lift", "id": mute.id, "by": operator})
        if found:
            ids = ",".join(mute.id for mute in found)
            self._audit(
                operator, "unmute", f"name {name!r} in {self._where(room)} ({ids})"
            )
        return len(found)

    # -- on every process: the rules change, and its connections are told --

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace the rules with a stored snapshot: at start, and when a
        cluster node fell behind the orders and reloads. Orders it skipped
        may have banned someone connected here, so every ban in force is
        enforced again (closing only those it covers)."""
        self.moderation.restore(snapshot)
        now = self._now()
        for found in self.moderation.sanctions("ban", now):
            notice = messages.moderation_notice("ban", found.reason, found.expires)
            for connection in self._sanctioned(found):
                connection.moderated(notice, CLOSE_BANNED, found.reason)
        for protection in self.moderation.protections():
            self._free(protection)

    def _on_order(self, order: Order) -> None:
        """Raises OrderError for an order that cannot be applied: the store
        logs it (another node's) or fails the submit with it (ours)."""
        found = self.moderation.apply(order)
        op = order.get("op")
        now = self._now()
        if op == "kick":
            notice = messages.moderation_notice("kick", order.get("reason", ""), None)
            for connection in self._holders(
                name_keys(order["name"]), order.get("room")
            ):
                connection.moderated(notice, CLOSE_KICKED, order.get("reason", ""))
        elif op == "sanction" and found is not None and found.active(now):
            notice = messages.moderation_notice(found.kind, found.reason, found.expires)
            close = CLOSE_BANNED if found.kind == "ban" else None
            for connection in self._sanctioned(found):
                connection.moderated(notice, close, found.reason)
        elif op == "lift" and found is not None and found.kind == "mute":
            notice = messages.moderation_notice("unmute", "", None)
            for connection in self._sanctioned(found):
                connection.moderated(notice, None, "")
        elif op == "verify" and isinstance(found, Protection):
            self._free(found)
        elif op == "slow":
            # Everyone in the room is told, on every node: a student held by
            # the old interval must not count down a wait that is over.
            event = messages.slow_mode(order["seconds"], self.factory.timestamps.now())
            frame = self.factory.prepareMessage(codec.encode(event))
            for connection in self._connections(order["room"]):
                if connection.room.name_of(connection) is not None:
                    connection.deliver(frame)

    def _free(self, protection: Protection) -> None:
        """Kick this process's holders of a protected nickname who have no
        token for it: from now on only its verified owner may hold it."""
        notice = messages.moderation_notice("kick", VERIFIED_KICK, None)
        for connection in self._holders(name_keys(protection.name), None):
            if not protection.covers(connection.room_name):
                continue
            identity = getattr(connection, "identity", None)
            if identity is not None and identity.is_for(protection.name):
                continue
            connection.moderated(notice, CLOSE_KICKED, VERIFIED_KICK)

    def _holders(self, keys: Iterable[str], room: str | None) -> list[Any]:
        keys = set(keys)
        return [
            connection
            for connection in self._connections(room)
            if (name := connection.room.name_of(connection)) is not None
            and keys.intersection(_held_keys(name))
        ]

    def _sanctioned(self, sanction: Sanction) -> list[Any]:
        if sanction.target == "name":
            return self._holders(name_keys(sanction.value), sanction.room)
        network = network_of(sanction.value)
        return [
            connection
            for connection in self._connections(sanction.room)
            if (address := address_of(connection.address or "")) is not None
            and address.version == network.version
            and address in network
        ]

    # -- rooms: deleting and announcing --

    @staticmethod
    def _where(room: str | None) -> str:
        if room is None:
            return "every room"
        return "the default room" if room == DEFAULT else f"room {room}"

    async def _in_room(self, room: str, act: Callable[[IRoom], Deferred]) -> Any:
        """Run `act` on a room, loading it for the while if nobody is in it;
        a room that is not there is not made for it."""
        checked = self._room(room)
        assert checked is not None
        if not await self.rooms.exists(checked):
            raise ModerationError(404, f"no room {checked!r}")
        try:
            entered = await self.rooms.enter(checked)
        except RoomRefused as e:
            raise ModerationError(404 if e.status == 404 else 503, str(e)) from None
        try:
            return await act(entered)
        except RoomError as e:
            raise ModerationError(503, str(e)) from None
        finally:
            self.rooms.leave(checked)

    @_deferred
    async def delete(
        self, operator: str, room: str, ids: list[int], reason: str
    ) -> list[int]:
        reason = _reason(reason)
        when = self.factory.timestamps.now()
        removed = await self._in_room(room, lambda r: r.delete(sorted(set(ids)), when))
        self._audit(
            operator,
            "delete",
            f"messages {_ranges(removed) or 'none'} in {self._where(room)}",
            reason,
        )
        return removed

    @_deferred
    async def delete_by(
        self,
        operator: str,
        room: str,
        name: str,
        since: int | None,
        until: int | None,
        reason: str,
    ) -> list[int]:
        if not is_valid_name(name):
            raise ModerationError(400, "not a nickname")
        reason = _reason(reason)
        when = self.factory.timestamps.now()
        removed = await self._in_room(
            room, lambda r: r.delete_by(name, since, until, when)
        )
        self._audit(
            operator,
            "delete-by",
            f"{len(removed)} messages of {name!r} in {self._where(room)} "
            f"from {_stamp(since)} to {_stamp(until)}",
            reason,
        )
        return removed

    @_deferred
    async def announce(
        self, operator: str, room: str | None, all_rooms: bool, text: str
    ) -> list[dict[str, Any]]:
        if not is_valid_content(text):
            raise ModerationError(400, "not a message chatbox can store")
        if all_rooms:
            targets = [name for name, _ in self.rooms.loaded()]
        else:
            checked = _room(room or DEFAULT)
            assert checked is not None
            targets = [checked]
        announcer = self.moderation.announcer
        posted = []
        for target in targets:
            when = self.factory.timestamps.now()
            stored = await self._in_room(
                target,
                lambda r, when=when: r.post(
                    None, announcer, text, when, None, mark="announcement"
                ),
            )
            posted.append({"room": target, "id": stored.id})
        where = ", ".join(self._where(target) for target in targets) or "no room"
        self._audit(operator, "announce", f"{text[:100]!r} to {where}")
        return posted


def _protected_rooms(rooms: Iterable[str] | None) -> list[str] | None:
    """A verify order's rooms, sorted: a token's (a set) or an operator's;
    each the default room "" or a room name in canonical form."""
    if rooms is None:
        return None
    if isinstance(rooms, str):
        raise ModerationError(400, "rooms is a list of rooms, or none for all")
    listed = list(rooms)
    if not all(isinstance(room, str) for room in listed):
        raise ModerationError(400, "rooms is a list of rooms, or none for all")
    listed = sorted(set(listed))
    if not listed:
        raise ModerationError(400, "rooms is a list of rooms, or none for all")
    for room in listed:
        if _room(room) != room:
            raise ModerationError(400, f"not a room name in canonical form: {room!r}")
    return listed


def _rooms_said(rooms: Iterable[str] | None) -> str:
    if rooms is None:
        return "every room"
    return ", ".join(Moderator._where(room) for room in sorted(rooms))


def _ranges(ids: list[int]) -> str:
    """1,2,3,7 -> "1-3,7": an audit line names every id without growing
    with a long run of them."""
    parts: list[str] = []
    start = previous = None
    for message_id in ids:
        if previous is not None and message_id == previous + 1:
            previous = message_id
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = message_id
    if start is not None:
        parts.append(str(start) if start == previous else f"{start}-{previous}")
    return ",".join(parts)
