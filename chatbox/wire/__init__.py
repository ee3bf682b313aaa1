"""The classic-chatbox v2 wire protocol (docs/PROTOCOL.md), one layer.

messages.py makes every JSON shape that goes on the wire; protocol.py turns
one connection's frames into calls on the room and writes the replies;
factory.py holds what all connections share (the broadcast list, limits,
metrics). Nothing here knows where history is kept.
"""
