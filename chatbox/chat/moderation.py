"""An operator's rules for the chat: bans, mutes, reserved nicknames and
slow mode, free of wire and storage.

`Moderation` is the one owner of these rules in a process. It changes only
by `apply(order)`, and an order is a plain JSON-able dict: the same shape is
written to disk (chatbox.local.moderation) and passed between cluster nodes
(chatbox.cluster.moderation), so every node that applies the same orders in
the same order holds the same rules. Everything else only asks questions,
synchronously, on the reactor thread: a handshake or a `send` must be
answered at once.

Nicknames are compared as ARNS compares them (chatbox.chat.arns): a ban on
`Admin` bans `аdmin` (Cyrillic а) too, or a look-alike would walk past it.
A verified (protected) nickname is held the same way, for the rooms its
tokens named, against everyone without a token for it (issue 15).
Reserved patterns (`*` and `?` globs) are compared by the same folded
skeleton, fragment by fragment. Addresses are compared as networks: a ban on
one IPv6 address bans that address only; `2001:db8::/48` a whole site.
"""

import ipaddress
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from twisted.internet.defer import Deferred
from zope.interface import Interface

from chatbox.chat.arns import (
    MAX_NAME_LENGTH,
    fold_key,
    is_valid_name,
    name_keys,
    spelling,
)
from chatbox.chat.roomnames import DEFAULT, NotARoom, check_name

if TYPE_CHECKING:  # chatbox.auth imports this layer's arns; no cycle at run time
    from chatbox.auth.identity import Identity

__all__ = [
    "KINDS",
    "MAX_PROTECTED_ROOMS",
    "MAX_REASON",
    "MAX_VERIFIED",
    "TARGETS",
    "IModerationStore",
    "Moderation",
    "ModerationError",
    "OrderError",
    "Protection",
    "Sanction",
    "SlowMode",
    "address_of",
    "network_of",
]

KINDS = ("ban", "mute")
TARGETS = ("name", "address")
MAX_REASON = 500
MAX_PATTERN = MAX_NAME_LENGTH
# Sanctions one process keeps at most: an operator scripting bans in a loop
# must not grow every node's memory (and every handshake's check) unbounded.
MAX_SANCTIONS = 10_000
MAX_RESERVED = 1_000
# Verified nicknames: each is a few keys in a dict, so this bounds memory,
# not the time of a check (a lookup whatever the count).
MAX_VERIFIED = 10_000
# Rooms one protection names (a token names at most 100; widening by later
# tokens may add more, up to this).
MAX_PROTECTED_ROOMS = 1_000
# Slow mode's longest wait between two messages of one person.
MAX_SLOW_SECONDS = 24 * 3600

Order = dict[str, Any]


# How a moderator's orders are signed (`by`): chatbox.wire.moderating names
# the moderator after it. Their mutes have a share of the rules of their
# own, per room and in all, so a room's moderator (or a leaked link) can
# never fill the MAX_SANCTIONS operators need.
MODERATOR_BY = "moderator "
MAX_ROOM_MODERATOR_MUTES = 200
MAX_MODERATOR_MUTES = 2_000


def _by_moderator(sanction: "Sanction") -> bool:
    return sanction.kind == "mute" and sanction.by.startswith(MODERATOR_BY)


class ModerationError(Exception):
    """An action refused for a reason whoever asked can fix (chatbox.admin's
    Moderator raises it); `status` is the HTTP status the admin API answers
    with, `message` the sentence an operator or a moderator is shown. Here,
    below both, so the admin API and the chat's moderator requests can tell
    it from a fault."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class OrderError(ValueError):
    """An order that cannot be applied; str() says why, for the operator."""


def network_of(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network an address or CIDR names; an IPv4-mapped IPv6 address is
    its IPv4 one, as chatbox.limits.address_key counts it. Raises OrderError."""
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise OrderError(f"not an address or CIDR: {value!r}") from None
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen >= 96:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def address_of(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client address as sanctions compare it (IPv4-mapped as IPv4), or
    None for one that is not an address."""
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class Sanction:
    """A ban or a mute. `room` None covers every room ("" is the default
    room); `expires` None never ends. Times are epoch milliseconds."""

    id: str
    kind: str
    target: str
    value: str
    reason: str
    by: str
    created: int
    expires: int | None
    room: str | None

    @classmethod
    def new(
        cls,
        kind: str,
        target: str,
        value: str,
        reason: str,
        by: str,
        now: int,
        expires: int | None,
        room: str | None,
    ) -> "Sanction":
        made = cls(
            f"{kind[0]}-{secrets.token_hex(5)}",
            kind,
            target,
            value,
            reason,
            by,
            now,
            expires,
            room,
        )
        made.check()
        return made

    @classmethod
    def from_dict(cls, fields: object) -> "Sanction":
        if not isinstance(fields, dict):
            raise OrderError("a sanction is an object")
        try:
            made = cls(**{name: fields[name] for name in cls.__dataclass_fields__})
        except KeyError as e:
            raise OrderError(f"a sanction needs {e.args[0]!r}") from None
        made.check()
        return made

    def check(self) -> None:
        """Raises OrderError for a sanction no operator could have made: a
        file or a node must never hand this process a rule it misreads."""
        text = (self.id, self.value, self.reason, self.by)
        if not all(isinstance(field, str) for field in text):
            raise OrderError("id, value, reason and by are strings")
        if self.kind not in KINDS or self.target not in TARGETS:
            raise OrderError(f"unknown sanction {self.kind!r} on {self.target!r}")
        if type(self.created) is not int or not (
            self.expires is None or type(self.expires) is int
        ):
            raise OrderError("created and expires are epoch milliseconds")
        if self.room is not None and not isinstance(self.room, str):
            raise OrderError("room is a string or null")
        if len(self.reason) > MAX_REASON:
            raise OrderError(f"a reason is at most {MAX_REASON} characters")
        if self.target == "name" and not is_valid_name(self.value):
            raise OrderError(f"not a nickname: {self.value!r}")
        if self.target == "address":
            network_of(self.value)

    def active(self, now: int) -> bool:
        return self.expires is None or now < self.expires

    def covers(self, room: str | None) -> bool:
        return self.room is None or self.room == room

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _protected_rooms(rooms: object) -> frozenset[str] | None:
    """A verify order's rooms: null (every room) or a list of room names in
    canonical form, "" for the default room. Raises OrderError."""
    if rooms is None:
        return None
    if not isinstance(rooms, list) or not 0 < len(rooms) <= MAX_PROTECTED_ROOMS:
        raise OrderError(f"rooms is null or a list of 1 to {MAX_PROTECTED_ROOMS}")
    for room in rooms:
        if room == DEFAULT:
            continue
        try:
            if not isinstance(room, str) or check_name(room) != room:
                raise NotARoom("not in canonical form")
        except NotARoom:
            raise OrderError(f"not a room name: {room!r}") from None
    return frozenset(rooms)


@dataclass(frozen=True)
class Protection:
    """A verified nickname: nobody without a token for it may take it (or a
    look-alike) in `rooms` (None: every room). `name` is as the first token
    wrote it; `by` and `at` (epoch ms) say who last widened it, and when."""

    name: str
    rooms: frozenset[str] | None
    by: str
    at: int
    # Whose it is: tokens for this spelling of the name (chat.arns.spelling).
    spelling: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spelling", spelling(self.name))

    @classmethod
    def from_order(cls, order: Order) -> "Protection":
        name, by, at = order.get("name"), order.get("by"), order.get("at")
        if not is_valid_name(name):
            raise OrderError(f"not a nickname: {name!r}")
        if not isinstance(by, str) or type(at) is not int:
            raise OrderError("a verify order needs by (text) and at (epoch ms)")
        return cls(name, _protected_rooms(order.get("rooms")), by, at)  # type: ignore[arg-type]

    def covers(self, room: str | None) -> bool:
        return self.rooms is None or room in self.rooms

    def widened(self, other: "Protection") -> "Protection":
        """This protection with `other`'s rooms too: a later token with
        other rooms adds to the rooms, never takes any away."""
        if self.rooms is None:
            return self
        if other.rooms is None:
            return Protection(self.name, None, other.by, other.at)
        if other.rooms <= self.rooms:
            return self
        rooms = self.rooms | other.rooms
        if len(rooms) > MAX_PROTECTED_ROOMS:
            raise OrderError(
                f"a verified nickname covers at most {MAX_PROTECTED_ROOMS} rooms"
            )
        return Protection(self.name, rooms, other.by, other.at)

    def to_dict(self) -> dict[str, Any]:
        rooms = None if self.rooms is None else sorted(self.rooms)
        return {"name": self.name, "rooms": rooms, "by": self.by, "at": self.at}


class _Pattern:
    """A reserved-name pattern, as a regular expression over the folded
    skeleton: each literal fragment is folded on its own, so `teacher*`
    reserves `Teacher Lan` and `Τeacher` (Greek Τ) alike."""

    def __init__(self, pattern: str) -> None:
        parts = re.split(r"([*?])", pattern)
        literal = "".join(part for part in parts if part not in ("*", "?"))
        if not literal.strip():
            raise OrderError("a reserved pattern needs something besides * and ?")
        regex = "".join(
            ".*" if part == "*" else "." if part == "?" else re.escape(fold_key(part))
            for part in parts
            if part
        )
        self.regex = re.compile(regex, re.DOTALL)

    def matches(self, keys: Iterable[str]) -> bool:
        return any(self.regex.fullmatch(key) for key in keys)


class Moderation:
    """The rules in force. `announcer` is the name operators' announcements
    are posted under, which is reserved whatever the patterns say."""

    def __init__(self, announcer: str = "chatbox") -> None:
        self.announcer = announcer
        self._announcer_keys = frozenset(name_keys(announcer))
        self._sanctions: dict[str, Sanction] = {}
        # For the checks on every handshake and send: name keys and exact
        # addresses are looked up; only CIDRs are scanned.
        self._by_key: dict[str, dict[str, Sanction]] = {}
        self._by_address: dict[str, dict[str, Sanction]] = {}
        self._networks: dict[str, tuple[Any, Sanction]] = {}
        self._reserved: dict[str, _Pattern] = {}
        self._slow: dict[str, float] = {}
        self._mutes = 0  # how many sanctions are mutes
        # Moderators' mutes per room: a share of the rules, so in-chat
        # moderators can never fill what operators need for bans.
        self._moderator_mutes: Counter[str | None] = Counter()
        # Verified nicknames by spelling (whose they are), and every ARNS key
        # of each to the protections holding it (whom they stop): `name`
        # asks on every request, so a check is a lookup per key, never a
        # scan.
        self._verified: dict[str, Protection] = {}
        self._protected: dict[str, dict[str, Protection]] = {}

    # -- changing: orders only --

    def apply(self, order: Order) -> Sanction | None:
        """Apply one order; returns the sanction it made or lifted, if any.
        Raises OrderError for an order that cannot be applied (nothing is
        changed then)."""
        op = order.get("op") if isinstance(order, dict) else None
        if op == "sanction":
            sanction = Sanction.from_dict(order.get("sanction"))
            if sanction.id not in self._sanctions:
                self._admit(sanction)
            return sanction
        if op == "lift":
            return self._remove(order.get("id"))
        if op == "slow":
            room, seconds = order.get("room"), order.get("seconds")
            if not isinstance(room, str) or type(seconds) not in (int, float):
                raise OrderError("slow mode needs a room and seconds")
            if not 0 <= seconds <= MAX_SLOW_SECONDS:
                raise OrderError(f"slow mode is 0 to {MAX_SLOW_SECONDS} seconds")
            if seconds:
                self._slow[room] = float(seconds)
            else:
                self._slow.pop(room, None)
            return None
        if op == "reserve":
            pattern = order.get("pattern")
            if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_PATTERN:
                raise OrderError(f"a pattern is 1 to {MAX_PATTERN} characters")
            if pattern not in self._reserved:
                if len(self._reserved) >= MAX_RESERVED:
                    raise OrderError(f"at most {MAX_RESERVED} reserved patterns")
                self._reserved[pattern] = _Pattern(pattern)
            return None
        if op == "unreserve":
            self._reserved.pop(order.get("pattern"), None)  # type: ignore[arg-type]
            return None
        if op == "verify":
            return self._verify(Protection.from_order(order))
        if op == "unverify":
            name = order.get("name")
            if not is_valid_name(name):
                raise OrderError(f"not a nickname: {name!r}")
            self._unverify(name)  # type: ignore[arg-type]
            return None
        if op == "kick":
            return None  # acted on by whoever holds the connection; not kept
        raise OrderError(f"unknown order {op!r}")

    def _is_announcer(self, keys: tuple[str, ...]) -> bool:
        folded = keys + tuple(fold_key(key) for key in keys)
        return bool(self._announcer_keys.intersection(folded))

    def is_announcer(self, name: str) -> bool:
        """`name` is the announcer's or looks like it: nobody's to take,
        token or not."""
        return self._is_announcer(name_keys(name))

    def _verify(self, protection: Protection) -> Protection:
        keys = name_keys(protection.name)
        if self._is_announcer(keys):
            raise OrderError(
                f"the announcer's name {self.announcer!r} is not a person's"
            )
        own = protection.spelling
        old = self._verified.get(own)
        if old is None:
            if len(self._verified) >= MAX_VERIFIED:
                raise OrderError(f"at most {MAX_VERIFIED} verified nicknames")
            merged = protection
        else:
            merged = old.widened(protection)
        self._verified[own] = merged
        # Indexed by the kept spelling's keys (a widening may write the
        # name in another case), so unverifying finds every entry again.
        for key in name_keys(merged.name):
            self._protected.setdefault(key, {})[own] = merged
        return merged

    def _unverify(self, name: str) -> list[Protection]:
        """Every protection `name` falls under goes: afterwards nobody's
        token is needed to take it (or any name it looks like)."""
        found = self._protections_of(name_keys(name))
        for first, protection in found.items():
            del self._verified[first]
            for key in name_keys(protection.name):
                held = self._protected[key]
                del held[first]
                if not held:
                    del self._protected[key]
        return list(found.values())

    def _protections_of(self, keys: Iterable[str]) -> dict[str, Protection]:
        return {
            first: protection
            for key in keys
            for first, protection in self._protected.get(key, {}).items()
        }

    def _admit(self, sanction: Sanction) -> None:
        """Add a new sanction, replacing the same rule in force (however
        two orders for it raced), within the caps; OrderError, and nothing
        changed, past them."""
        olds = [
            old
            for old in self.same(
                sanction.kind, sanction.target, sanction.value, sanction.room
            )
            if old.id != sanction.id
        ]
        if len(self._sanctions) - len(olds) >= MAX_SANCTIONS:
            raise OrderError(f"at most {MAX_SANCTIONS} bans and mutes")
        if _by_moderator(sanction):
            replaced = [old for old in olds if _by_moderator(old)]
            in_room = self._moderator_mutes.get(sanction.room, 0) - sum(
                old.room == sanction.room for old in replaced
            )
            if in_room >= MAX_ROOM_MODERATOR_MUTES:
                raise OrderError(
                    f"this room's moderators have {MAX_ROOM_MODERATOR_MUTES} "
                    "mutes in force; unmute some, or ask an operator"
                )
            everywhere = sum(self._moderator_mutes.values()) - len(replaced)
            if everywhere >= MAX_MODERATOR_MUTES:
                raise OrderError(
                    f"moderators have {MAX_MODERATOR_MUTES} mutes in force in all "
                    "rooms; unmute some, or ask an operator"
                )
        for old in olds:
            self._remove(old.id)
        self._add(sanction)

    def _add(self, sanction: Sanction) -> None:
        self._sanctions[sanction.id] = sanction
        self._mutes += sanction.kind == "mute"
        if _by_moderator(sanction):
            self._moderator_mutes[sanction.room] += 1
        if sanction.target == "name":
            for key in name_keys(sanction.value):
                self._by_key.setdefault(key, {})[sanction.id] = sanction
            return
        network = network_of(sanction.value)
        if network.num_addresses == 1:
            exact = str(network.network_address)
            self._by_address.setdefault(exact, {})[sanction.id] = sanction
        else:
            self._networks[sanction.id] = (network, sanction)

    def _remove(self, sanction_id: object) -> Sanction | None:
        sanction = self._sanctions.pop(sanction_id, None)  # type: ignore[arg-type]
        if sanction is None:
            return None
        self._mutes -= sanction.kind == "mute"
        if _by_moderator(sanction):
            self._moderator_mutes[sanction.room] -= 1
            if not self._moderator_mutes[sanction.room]:
                del self._moderator_mutes[sanction.room]
        if sanction.target == "name":
            index, keys = self._by_key, name_keys(sanction.value)
        else:
            network = network_of(sanction.value)
            self._networks.pop(sanction.id, None)
            index, keys = self._by_address, (str(network.network_address),)
        for key in keys:
            held = index.get(key, {})
            held.pop(sanction.id, None)
            if not held:
                index.pop(key, None)
        return sanction

    def prune(self, now: int) -> int:
        """Forget expired sanctions (at a snapshot); returns how many."""
        gone = [s.id for s in self._sanctions.values() if not s.active(now)]
        for sanction_id in gone:
            self._remove(sanction_id)
        return len(gone)

    # -- storage --

    def snapshot(self) -> dict[str, Any]:
        return {
            "sanctions": [s.to_dict() for s in self._sanctions.values()],
            "reserved": list(self._reserved),
            "slow": dict(self._slow),
            "verified": [p.to_dict() for p in self._verified.values()],
        }

    def restore(self, snapshot: object) -> None:
        """Replace every rule with a snapshot's; raises OrderError (nothing
        is replaced then) for one this version cannot read."""
        if not isinstance(snapshot, dict):
            raise OrderError("a moderation snapshot is an object")
        fresh = Moderation(self.announcer)
        for fields in snapshot.get("sanctions", []):
            fresh.apply({"op": "sanction", "sanction": fields})
        for pattern in snapshot.get("reserved", []):
            fresh.apply({"op": "reserve", "pattern": pattern})
        slow = snapshot.get("slow", {})
        if not isinstance(slow, dict):
            raise OrderError("slow is an object")
        for room, seconds in slow.items():
            fresh.apply({"op": "slow", "room": room, "seconds": seconds})
        verified = snapshot.get("verified", [])  # absent before issue 15
        if not isinstance(verified, list):
            raise OrderError("verified is a list")
        for fields in verified:
            if not isinstance(fields, dict):
                raise OrderError("a verified nickname is an object")
            fresh.apply(fields | {"op": "verify"})
        self.__dict__.update(fresh.__dict__)

    # -- asking --

    def sanctions(self, kind: str, now: int) -> list[Sanction]:
        """Active sanctions of one kind, oldest first."""
        found = [
            s for s in self._sanctions.values() if s.kind == kind and s.active(now)
        ]
        return sorted(found, key=lambda s: (s.created, s.id))

    def same(
        self, kind: str, target: str, value: str, room: str | None
    ) -> list[Sanction]:
        """The sanctions on exactly this target, found through the indexes
        (a script banning thousands must not scan them all for each)."""
        if target == "name":
            held = self._by_key.get(name_keys(value)[0], {}).values()
        elif (network := network_of(value)).num_addresses == 1:
            held = self._by_address.get(str(network.network_address), {}).values()
        else:
            held = [sanction for _, sanction in self._networks.values()]
        return [
            s
            for s in held
            if (s.kind, s.target, s.value, s.room) == (kind, target, value, room)
        ]

    def get(self, sanction_id: str) -> Sanction | None:
        return self._sanctions.get(sanction_id)

    def reserved(self) -> list[str]:
        return sorted(self._reserved)

    def slow_modes(self) -> dict[str, float]:
        return dict(self._slow)

    def slow_mode(self, room: str) -> float:
        """Seconds between two messages of one person in `room`; 0: off."""
        return self._slow.get(room, 0.0)

    def is_reserved(self, keys: Iterable[str]) -> bool:
        """Reserved is stricter than ARNS, whose look-alike test is not
        transitive (`Τeacher`, Greek Τ, looks like `Teacher`, which is
        `teacher` in another case): each key is also compared folded, so
        a pattern holds off every step of such a chain."""
        keys = tuple(keys)
        keys += tuple(fold_key(key) for key in keys)
        if self._announcer_keys.intersection(keys):
            return True
        return any(pattern.matches(keys) for pattern in self._reserved.values())

    def _first(
        self, found: Iterable[Sanction], kind: str, room: str | None, now: int
    ) -> Sanction | None:
        """The sanction that lasts longest, of those in force."""
        live = [s for s in found if s.kind == kind and s.covers(room) and s.active(now)]
        if not live:
            return None
        return max(live, key=lambda s: float("inf") if s.expires is None else s.expires)

    def named(self, kind: str, name: str, now: int) -> list[Sanction]:
        """Every sanction of one kind in force on `name` or a look-alike,
        whatever its room, oldest first."""
        found = {
            s.id: s
            for key in name_keys(name)
            for s in self._by_key.get(key, {}).values()
            if s.kind == kind and s.active(now)
        }
        return sorted(found.values(), key=lambda s: (s.created, s.id))

    def on_name(
        self, kind: str, name: str, room: str | None, now: int
    ) -> Sanction | None:
        keys = name_keys(name)
        found = (s for key in keys for s in self._by_key.get(key, {}).values())
        return self._first(found, kind, room, now)

    def on_address(
        self, kind: str, address: str, room: str | None, now: int
    ) -> Sanction | None:
        """`room` None asks about the whole server (the page, a handshake
        before its room is known): only sanctions on every room count."""
        parsed = address_of(address)
        if parsed is None:
            return None
        found = list(self._by_address.get(str(parsed), {}).values())
        found += [
            sanction
            for network, sanction in self._networks.values()
            if parsed.version == network.version and parsed in network
        ]
        return self._first(found, kind, room, now)

    def _banned_keys(self, keys: tuple[str, ...], room: str | None, now: int) -> bool:
        found = (s for key in keys for s in self._by_key.get(key, {}).values())
        return self._first(found, "ban", room, now) is not None

    def name_refusal(
        self,
        name: str,
        room: str | None,
        now: int,
        identity: "Identity | None" = None,
    ) -> str | None:
        """Why `name` may not be taken in `room`: "reserved", "banned",
        "verified" (a guest, and the name is protected here) or "token"
        (a connection with a token, and this is not its nickname).

        A token's own nickname passes reserved patterns (an operator
        reserves names for verified people before they first come), but
        not a ban, nor ever the announcer's name. Asked on every `name`
        request: the keys are made once, and each question is a lookup."""
        keys = name_keys(name)
        if identity is not None:
            if not identity.is_for(name):
                return "token"
            if self._is_announcer(keys):
                return "reserved"
            if self._banned_keys(keys, room, now):
                return "banned"
            # A token for `Ian` is not one for the verified `Lan`, though
            # ARNS calls the two the same.
            if self._protected and self._protecting(keys, room, identity.spelling):
                return "verified"
            return None
        if self.is_reserved(keys):
            return "reserved"
        if self._banned_keys(keys, room, now):
            return "banned"
        if self._protected and self._protecting(keys, room):
            return "verified"
        return None

    def _protecting(
        self, keys: Iterable[str], room: str | None, own: str | None = None
    ) -> bool:
        """A protection stops `keys` in `room`: any covering it but the one
        for the spelling `own` (a token holder's)."""
        return any(
            protection.covers(room)
            for key in keys
            for whose, protection in self._protected.get(key, {}).items()
            if whose != own
        )

    def look_alike(self, name: str) -> Protection | None:
        """A verified nickname that `name` looks like but is not (another
        spelling), if any: whose token would be stopped by it."""
        own = spelling(name)
        for protection in self._protections_of(name_keys(name)).values():
            if protection.spelling != own:
                return protection
        return None

    def protection(
        self, name: str, exact: bool = False
    ) -> list[str] | Literal[False] | None:
        """The rooms where `name` (or a look-alike; `exact`: this spelling
        only) is verified, sorted; None: every room; False: nowhere."""
        found = self._protections_of(name_keys(name)).values()
        if exact:
            own = spelling(name)
            found = [p for p in found if p.spelling == own]  # type: ignore[assignment]
        if not found:
            return False
        if any(protection.rooms is None for protection in found):
            return None
        return sorted(set().union(*(p.rooms for p in found)))  # type: ignore[arg-type]

    def protections(self) -> list[Protection]:
        return list(self._verified.values())

    def verified_count(self) -> int:
        return len(self._verified)

    def verified(self) -> list[dict[str, Any]]:
        """Every verified nickname, for the operator, by name."""
        listed = [protection.to_dict() for protection in self._verified.values()]
        return sorted(listed, key=lambda p: (p["name"].casefold(), p["name"]))

    def muted(
        self, name: str | None, address: str | None, room: str | None, now: int
    ) -> Sanction | None:
        """The mute on this nickname or address in `room`, if any. Asked
        for every message, so the usual answer (no mutes at all) is one
        counter, not a skeleton."""
        if not self._mutes:
            return None
        found = []
        if name is not None:
            found.append(self.on_name("mute", name, room, now))
        if address is not None:
            found.append(self.on_address("mute", address, room, now))
        return self._first((s for s in found if s is not None), "mute", room, now)

    def banned(
        self, name: str | None, address: str | None, room: str | None, now: int
    ) -> Sanction | None:
        found = []
        if name is not None:
            found.append(self.on_name("ban", name, room, now))
        if address is not None:
            found.append(self.on_address("ban", address, room, now))
        return self._first((s for s in found if s is not None), "ban", room, now)


class SlowMode:
    """When each person last sent in a room under slow mode. A person is a
    nickname (by its ARNS key) and, separately, a connection, so renaming
    does not skip the wait; reconnecting under a new nickname does, which
    is what a mute is for."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], float] = {}

    def wait(self, room: str, who: Iterable[str], now: float, seconds: float) -> float:
        """Seconds until `who` may send in `room`; 0 (and the send is
        counted) if now."""
        keys = [(room, key) for key in who]
        waits = [self._last.get(key, -seconds) + seconds - now for key in keys]
        wait = max(waits, default=0.0)
        if wait > 0:
            return wait
        if len(self._last) > 100_000:
            self._prune(now)
        for key in keys:
            self._last[key] = now
        return 0.0

    def _prune(self, now: float) -> None:
        cutoff = now - MAX_SLOW_SECONDS
        self._last = {k: t for k, t in self._last.items() if t > cutoff}


class IModerationStore(Interface):
    """Where the rules are kept, and how orders reach every process that
    applies them: a file for one process, Redis for a cluster."""

    def load() -> "Deferred[dict[str, Any]]":
        """The snapshot to start from (empty rules if none is stored)."""

    def start(apply: Callable[[Order], None]) -> None:
        """From now on hand every order, this process's and others', to
        `apply`, once each, in the one order all processes see."""

    def submit(order: Order) -> "Deferred[None]":
        """Keep an order; fires once it is durable and `apply` has run here
        with it. Fails with OSError (local) or RoomError (cluster)."""

    def close() -> "Deferred[None]":
        """Stop; everything submitted so far is settled."""
