# -*- test-case-name: tests.unit.test_cluster_units -*-
"""The cluster's Redis keys, by name.

Every script of chatbox.cluster.scripts gets the same KEYS, in the order of
`Keys`' fields, and unpacks them into Lua locals of the same names; Python
reads them as fields (`keys.events`), never by position, so adding a key is
one line here and one in the scripts' preamble.

A room's own state (each room is a chat of its own: ARNS, history, events):

- owner    HASH  nickname key (chatbox.chat.arns.name_keys) -> holder
- held     HASH  holder -> its nickname keys, joined by newlines
- display  HASH  holder -> nickname as typed
- online   ZSET  holders, scored by when they registered (v2's order)
- joinseq  STRING  the last registration number
- msgid    STRING  the last message id
- history  ZSET  encoded history entries, scored by id
- events   STREAM  every register / change / message / leave, in order,
                 and typing (ext) hints between them
- sends    HASH  "<nickname>\n<send_id>" -> message id, of recent sends
                 that carried a send_id (chatbox.chat.sends says why)
- sendexp  ZSET  the same fields -> when each is forgotten, in ms of Redis'
                 clock
- holders  prefix: `<holders>:<node id>` is the SET of that node's holders
                 in this room
- followers SET  the nodes that have this room loaded (named rooms only)
- verified SET   the holders whose nickname is verified (their connection
                 showed a token for it): kept and dropped with the name by
                 the same scripts, so `get` lists them and a claim that
                 finds its name taken says whether the holder is verified

The cluster's, the same in every room's Keys:

- nodes    ZSET  node id -> lease expiry, in ms of Redis' own clock (one
                 lease per node, whatever rooms it follows)
- rooms    SET   the named rooms that exist: followed by a node, or with a
                 message (what --max-rooms counts, cluster-wide)
- following prefix: `<following>:<node id>` is the SET of the named rooms
                 that node follows, so whoever reaps a dead node finds its
                 holders in every room
- named    prefix of the named rooms' keys: room NAME's own keys are
                 `<named><NAME>:<field>` (scripts.py's `use_room` builds the
                 same names in Lua, to reap a dead node's rooms)
- bell     prefix: `<bell>:<node id>` is a STREAM with an entry naming a
                 named room's stream for each event in a room the node
                 follows (its reader blocks on it, chatbox.cluster.reader)
- moderation STRING  the moderation snapshot, as JSON: `{"through": the id
                 of the last order it includes, "seen": how many orders the
                 stream had then, "state": Moderation.snapshot()}`
                 (chatbox.cluster.moderation)
- orders   STREAM  every moderation order, in the one order every node
                 applies them (capped at ORDERS_LENGTH, approximately)
- purge    STRING  the retention purge's lease: the id of the node purging
                 now, set with NX and a time to live (chatbox.cluster.purge);
                 every removal the purge makes checks it, so two nodes never
                 purge at once

A stream's XDEL count (`<events>:deleted`, a STRING: entries removed by
DELETE and by the purge, never by trimming) lets a reader tell removed
entries from trimmed ones (chatbox.cluster.reader); `deleted_count_of`
names it, and the scripts build the same name.

The default room (`/`, name "") keeps exactly the keys a cluster had before
rooms: `<prefix><field>`, with its holder sets at `<prefix>nodes:<node id>`,
so an existing cluster's data and `chatbox-redis` exports keep working.
Room NAME's are under `<prefix>room:<NAME>:` (a room name has no `:`).

This module imports nothing heavy: chatbox-redis and the tests use it as well
as the node.
"""

from typing import NamedTuple

__all__ = [
    "BELL_LENGTH",
    "DEFAULT_PREFIX",
    "ORDERS_LENGTH",
    "ROOM_FIELDS",
    "STREAM_LENGTH",
    "Keys",
    "deleted_count_of",
]

DEFAULT_PREFIX = "chatbox:"
# Events kept in the stream (approximately; Redis trims whole blocks). A node
# reads them as they come; this only bounds how long one may be away.
STREAM_LENGTH = 100_000
# Entries kept in a node's bell (approximately): a reader reads them as they
# come, and reads every room again after any reconnect.
BELL_LENGTH = 10_000
# Moderation orders kept (approximately): a node that fell further behind
# reloads the snapshot instead.
ORDERS_LENGTH = 10_000

# A room's own keys, each `<room prefix><field>` (holders: `<prefix>nodes`).
ROOM_FIELDS = (
    "owner",
    "held",
    "display",
    "online",
    "joinseq",
    "msgid",
    "history",
    "events",
    "sends",
    "sendexp",
    "holders",
    "followers",
    "verified",
)


def _room_key(prefix: str, field: str) -> str:
    # `nodes:<node>` is where the holder sets always were: kept for the default
    # room, and the same shape in a named room's prefix.
    return f"{prefix}{'nodes' if field == 'holders' else field}"


class Keys(NamedTuple):
    owner: str
    held: str
    display: str
    online: str
    joinseq: str
    nodes: str
    msgid: str
    history: str
    events: str
    sends: str
    sendexp: str
    holders: str
    followers: str
    rooms: str
    following: str
    named: str
    bell: str
    moderation: str
    orders: str
    # A room's own, but last: the other fields keep their places in KEYS.
    verified: str
    # The cluster's, after it for the same reason.
    purge: str

    @classmethod
    def under(cls, prefix: str = DEFAULT_PREFIX) -> "Keys":
        """The default room's keys (every one `<prefix><field>`, holders at
        `<prefix>nodes:<node>`): one Redis holds one cluster per prefix."""
        return cls.for_room("", prefix)

    @classmethod
    def for_room(cls, name: str, prefix: str = DEFAULT_PREFIX) -> "Keys":
        """Room `name`'s keys ("" is the default room) in the cluster under
        `prefix`; `name` must be a valid room name (chatbox.chat.roomnames)."""
        own = f"{prefix}room:{name}:" if name else prefix
        fields = {field: _room_key(own, field) for field in ROOM_FIELDS}
        fields.update(
            nodes=f"{prefix}nodes",
            rooms=f"{prefix}rooms",
            following=f"{prefix}following",
            named=f"{prefix}room:",
            bell=f"{prefix}bell",
            moderation=f"{prefix}moderation",
            orders=f"{prefix}moderation:orders",
            purge=f"{prefix}purge",
        )
        return cls(**fields)

    def room(self, name: str) -> "Keys":
        """Room `name`'s keys in the same cluster (the same prefix)."""
        return Keys.for_room(name, self.named.removesuffix("room:"))

    def bell_of(self, node: str) -> str:
        return f"{self.bell}:{node}"


def deleted_count_of(stream: str | bytes) -> str | bytes:
    """The key counting the entries XDEL removed from `stream` (DELETE's
    and the purge's), which the scripts name `<events>:deleted` too."""
    return stream + (b":deleted" if isinstance(stream, bytes) else ":deleted")
