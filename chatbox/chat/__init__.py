"""The chat's rules, apart from the wire and from storage.

arns.py decides which nicknames may coexist, content.py which messages may
be sent, and room.py is IRoom: the one interface through which the wire
layer reaches a chat, whichever backend keeps it.
"""
