"""chatbox: a WebSocket chat server for the classic-chatbox v2 protocol.

The wire contract lives in docs/PROTOCOL.md; chatbox.wire.protocol implements it.
"""

__version__ = "0.1.0"
