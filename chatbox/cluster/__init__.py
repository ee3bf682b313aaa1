"""The cluster backend: rooms shared by several nodes through Redis.

Importing this package imports nothing heavy; the modules that speak to
Redis (link, and commands, reader, lease, room and rooms built on it) pull in
txredisapi, and tap imports them only when `--redis` is given, so a
single-process server never loads the client. address, keys and scripts
import nothing heavy.

    rooms     the IRoomMaker: a named room followed while used here
    room      the IRoom: this node's connections, requests, delivery
    reader    follows the loaded rooms' streams, hands each event on in order
    lease     the node's lease and heartbeat, and what losing it means
    commands  the command link, running scripts with the keys
    keys      the cluster's Redis keys, by name
    scripts   the Lua scripts, each one atomic change and its event
    link      one Redis connection that knows whether it is up
    address   where Redis is, parsed from --redis
    transfer  chatbox-redis: history between data.json and Redis
"""
