"""The cluster backend: one room shared by several nodes through Redis.

Importing this package imports nothing heavy; the modules that speak to
Redis (link, room) pull in txredisapi, and tap imports them only when
`--redis` is given, so a single-process server never loads the client.
"""
