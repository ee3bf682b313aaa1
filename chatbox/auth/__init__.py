"""Verified nicknames: who an operator (or their website) vouches for.

A signed token (a JWT) names a nickname, when it ends, and optionally the
rooms it is good in and the roles it grants (`moderator`). chatbox checks
tokens; it keeps no accounts. `identity` is the shape every layer shares;
`verifier` checks a token against the configured keys; `minting` signs one
with the server's own secret (chatbox-admin token).
"""
