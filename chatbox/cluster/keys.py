# -*- test-case-name: tests.unit.test_cluster_units -*-
"""The cluster's Redis keys, by name.

Every script of chatbox.cluster.scripts gets the same KEYS, in the order of
`Keys`' fields, and unpacks them into Lua locals of the same names; Python
reads them as fields (`keys.events`), never by position, so adding a key is
one line here and one in the scripts' preamble.

- owner    HASH  nickname key (chatbox.chat.arns.name_keys) -> holder
- held     HASH  holder -> its nickname keys, joined by newlines
- display  HASH  holder -> nickname as typed
- online   ZSET  holders, scored by when they registered (v2's order)
- joinseq  STRING  the last registration number
- nodes    ZSET  node id -> lease expiry, in ms of Redis' own clock;
                 `<nodes>:<node id>` is the SET of that node's holders
- msgid    STRING  the last message id
- history  ZSET  encoded history entries, scored by id
- events   STREAM  every register / change / message / leave, in order,
                 and typing (ext) hints between them
- sends    HASH  "<nickname>\n<send_id>" -> message id, of recent sends
                 that carried a send_id (chatbox.chat.sends says why)
- sendexp  ZSET  the same fields -> when each is forgotten, in ms of Redis'
                 clock

This module imports nothing heavy: chatbox-redis and the tests use it as well
as the node.
"""

from typing import NamedTuple

__all__ = ["DEFAULT_PREFIX", "STREAM_LENGTH", "Keys"]

DEFAULT_PREFIX = "chatbox:"
# Events kept in the stream (approximately; Redis trims whole blocks). A node
# reads them as they come; this only bounds how long one may be away.
STREAM_LENGTH = 100_000


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

    @classmethod
    def under(cls, prefix: str = DEFAULT_PREFIX) -> "Keys":
        """Every key named `<prefix><field>`: one Redis holds one cluster
        per prefix."""
        return cls(*(f"{prefix}{name}" for name in cls._fields))
