"""The Lua scripts that change a cluster's shared state, each atomic in Redis.

Redis runs one script at a time, so a script's check and its change cannot
be split by another node's request: two clients on two nodes racing for one
nickname are decided by whichever script Redis runs first, and the loser
sees the name taken. Each state change and the event that tells everyone
about it are written by the same script, so there is exactly one event per
change, never a change without its event or an event without its change.

Every script gets the same KEYS, in the order of chatbox.cluster.keys.Keys
(whose docstring says what each holds), and the preamble below unpacks them
into locals of the same names: those of the room the script is about (a
named room's, or the default room's). Node-wide scripts (HEARTBEAT, RETIRE)
get the default room's, and reach the named rooms a node follows through
its `following` set and `use_room`; STREAM_STATE alone takes streams.

A holder is one connection: `<node id>:<number>`. Leases use Redis' clock
(TIME), so the nodes' clocks need not agree.

A nickname has one to three keys, and two names clash when they share any
one, so `owner` has an entry per key. Scripts take a holder's keys as one
argument joined by newlines, which no key contains (ARNS refuses control
characters). Upgrading needs no migration: a `held` entry written by an
older chatbox (one NFKC + casefold key) reads as a list of one, and is gone
when its node stops or its lease runs out. While old and new nodes share
one Redis, each still judges names by its own rule, so stop the old ones
before relying on the look-alike rule.

Verified nicknames (the `verified` set) came later still, the same way: an
older node's events lack `v`, its claims are never verified, and its
scripts, which do not know the set, may leave a released holder in it when
they free a newer node's name (reaping a dead node, say). Such an entry is
never read: PAGE asks only about holders online, and every CLAIM and
RENAME sets or clears its holder's entry.

The scripts are bytes, encoded once here rather than at every request.
"""

from chatbox.cluster.keys import BELL_LENGTH

__all__ = [
    "CLAIM",
    "DELETE",
    "ENTRIES",
    "EXPIRE",
    "FOLLOW",
    "HEARTBEAT",
    "IMPORT",
    "MODERATION_LOAD",
    "MODERATION_POLL",
    "MODERATION_SUBMIT",
    "ONLINE_COUNT",
    "PAGE",
    "POST",
    "PURGE_LEASE",
    "RELEASE",
    "RENAME",
    "RETIRE",
    "ROOM_NAMES",
    "ROOM_SUMMARY",
    "STREAM_STATE",
    "TYPING",
    "UNFOLLOW",
]

# The locals in the order of chatbox.cluster.keys.Keys' fields.
_PREAMBLE = (
    f"local BELL_LENGTH = {BELL_LENGTH}\n"
    + """
local owner, held, display, online, joinseq, nodes, msgid, history, events,
      sends, sendexp, holders, followers, rooms, following, named, bell,
      moderation, orders, verified, purge =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9],
  KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15], KEYS[16], KEYS[17],
  KEYS[18], KEYS[19], KEYS[20], KEYS[21]

-- Switch the room-level locals (and so every function below) to room
-- `name`'s keys, built as chatbox.cluster.keys.Keys.for_room builds them; false
-- switches back to the script's own room. Only reaping a node, which must
-- reach every room it followed, uses it.
local own_room = {owner, held, display, online, joinseq, msgid, history, events,
                  sends, sendexp, holders, followers, verified}
local function use_room(name)
  if name then
    local p = named .. name .. ':'
    owner = p .. 'owner'
    held = p .. 'held'
    display = p .. 'display'
    online = p .. 'online'
    joinseq = p .. 'joinseq'
    msgid = p .. 'msgid'
    history = p .. 'history'
    events = p .. 'events'
    sends = p .. 'sends'
    sendexp = p .. 'sendexp'
    holders = p .. 'nodes'
    followers = p .. 'followers'
    verified = p .. 'verified'
  else
    owner, held, display, online, joinseq, msgid, history, events, sends, sendexp,
      holders, followers, verified = unpack(own_room)
  end
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function holders_of(node)
  return holders .. ':' .. node
end

local function following_of(node)
  return following .. ':' .. node
end

local function leased(node)
  local expiry = redis.call('ZSCORE', nodes, node)
  return expiry and tonumber(expiry) > now_ms()
end

-- Append an event to the room's stream, and ring the bell of every node
-- that follows the room (a named room's followers; the default room has
-- none, every node reads its stream) with the stream's name: the node's
-- reader blocks on its bell and reads just the streams it names. In the
-- same script, so the ring costs no write of its own to the append-only
-- file, and a ring is never without its event.
local function emit(maxlen, ...)
  local id = redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', ...)
  for _, node in ipairs(redis.call('SMEMBERS', followers)) do
    redis.call('XADD', bell .. ':' .. node, 'MAXLEN', '~', BELL_LENGTH, '*',
               'r', events)
  end
  return id
end

-- Lua has no split; keys are never empty, so only non-empty parts count.
local function split(joined)
  local parts = {}
  for part in string.gmatch(joined, '[^\\n]+') do
    parts[#parts + 1] = part
  end
  return parts
end

-- The holder other than `holder` that holds a key of `keys`, or false. An
-- `owner` entry whose holder does not list that key in `held` holds nothing:
-- only a node of an older chatbox, which knew one key per holder, could
-- have left it behind, and it must not keep a name taken for ever.
local function taken(keys, holder)
  for _, key in ipairs(keys) do
    local current = redis.call('HGET', owner, key)
    if current and current ~= holder then
      for _, listed in ipairs(split(redis.call('HGET', held, current) or '')) do
        if listed == key then
          return current
        end
      end
    end
  end
  return false
end

-- What CLAIM and RENAME answer when `other` holds the name: 0, or -2 if
-- its nickname is verified (a verified claim may have a guest give it up,
-- never another verified connection).
local function refusal(other)
  if redis.call('SISMEMBER', verified, other) == 1 then
    return -2
  end
  return 0
end

-- Whether `holder`'s nickname is verified: `flag` is "1" if so. Set either
-- way, so no entry left by a node of an older chatbox (whose release did
-- not know this set) can outlive the name it was for.
local function mark_verified(holder, flag)
  if flag == '1' then
    redis.call('SADD', verified, holder)
  else
    redis.call('SREM', verified, holder)
  end
end

-- Give `holder` every key of `keys`, as one `held` entry.
local function hold(holder, keys, joined)
  for _, key in ipairs(keys) do
    redis.call('HSET', owner, key, holder)
  end
  redis.call('HSET', held, holder, joined)
end

-- Free the keys `holder` is listed with in `held`, and that entry.
local function unhold(holder, joined)
  for _, key in ipairs(split(joined)) do
    if redis.call('HGET', owner, key) == holder then
      redis.call('HDEL', owner, key)
    end
  end
  redis.call('HDEL', held, holder)
end

-- Free whatever nickname `holder` has; returns it as typed, or false.
local function drop(holder)
  local joined = redis.call('HGET', held, holder)
  if not joined then
    return false
  end
  local name = redis.call('HGET', display, holder)
  unhold(holder, joined)
  redis.call('HDEL', display, holder)
  redis.call('ZREM', online, holder)
  redis.call('SREM', verified, holder)
  return name
end

-- Record that `node` follows named room `name` (whose keys are in use): the
-- room exists, and a reaper of the node finds its holders there.
local function follow(node, name)
  redis.call('SADD', rooms, name)
  redis.call('SADD', followers, node)
  redis.call('SADD', following_of(node), name)
end

-- A named room nobody follows and that never held a message is not kept:
-- its keys go, and it no longer counts towards --max-rooms. Returns 1 if so.
local function forget_if_empty(name)
  if redis.call('SCARD', followers) > 0 or redis.call('EXISTS', msgid) == 1 then
    return 0
  end
  redis.call('DEL', owner, held, display, online, joinseq, history, events,
             sends, sendexp, followers, verified)
  redis.call('SREM', rooms, name)
  return 1
end

-- Release every nickname a node holds in the room in use, with a leave each.
local function reap_here(node, ts, ms, maxlen)
  local released = 0
  for _, holder in ipairs(redis.call('SMEMBERS', holders_of(node))) do
    local name = drop(holder)
    if name then
      emit(maxlen, 'k', 'leave', 'o', holder, 'n', name, 't', ts, 'ms', ms)
      released = released + 1
    end
  end
  redis.call('DEL', holders_of(node))
  return released
end

-- Release every nickname a node holds, in the script's room (the default)
-- and in every named room it follows, with a leave each; forget the node.
local function reap(node, ts, ms, maxlen)
  local released = reap_here(node, ts, ms, maxlen)
  for _, name in ipairs(redis.call('SMEMBERS', following_of(node))) do
    use_room(name)
    released = released + reap_here(node, ts, ms, maxlen)
    redis.call('SREM', followers, node)
    forget_if_empty(name)
  end
  use_room(false)
  redis.call('DEL', following_of(node), bell .. ':' .. node)
  redis.call('ZREM', nodes, node)
  return released
end

-- When the newest message of the room in use was posted (epoch ms), or -1.
local function last_activity()
  local newest = redis.call('ZRANGE', history, -1, -1)
  if #newest == 0 then
    return -1
  end
  local ok, entry = pcall(cjson.decode, newest[1])
  if ok and type(entry) == 'table' and type(entry['time']) == 'number' then
    return entry['time']
  end
  return -1
end

-- An encoded history entry's `time` (epoch ms), or nil when it has none
-- (a v2 import whose timestamp could not be read) or cannot be decoded.
local function time_of(entry)
  local ok, decoded = pcall(cjson.decode, entry)
  if ok and type(decoded) == 'table' and type(decoded['time']) == 'number' then
    return decoded['time']
  end
  return nil
end

-- The lowest id the room's retention keeps in the history in use: at most
-- the `most` newest messages (0: no such limit), none posted before
-- `oldest` (epoch ms; '' for no age limit). Retention cuts a prefix
-- (chatbox.chat.retention.first_kept, whose binary search this is): the
-- count by ZCARD, the age by bisecting the entries by rank, decoding only
-- the ~17 probed in a history of 100,000; an entry with no readable time
-- counts as older than any limit. 0 when nothing is cut; above every id
-- when nothing is kept.
local function kept_from(most, oldest)
  most = tonumber(most) or 0
  oldest = tonumber(oldest)
  if most <= 0 and not oldest then
    return 0
  end
  local count = redis.call('ZCARD', history)
  local low = 0
  if most > 0 and count > most then
    low = count - most
  end
  if oldest then
    local high = count
    while low < high do
      local middle = math.floor((low + high) / 2)
      local when = time_of(redis.call('ZRANGE', history, middle, middle)[1])
      if when == nil or when < oldest then
        low = middle + 1
      else
        high = middle
      end
    end
  end
  if low >= count then
    local newest = redis.call('ZRANGE', history, -1, -1, 'WITHSCORES')
    if #newest == 0 then
      return 0
    end
    return tonumber(newest[2]) + 1
  end
  return tonumber(redis.call('ZRANGE', history, low, low, 'WITHSCORES')[2])
end

-- A ZRANGE BYSCORE lower bound ("-inf", "(N" or "N") raised to at least
-- id `floor` (ids are integers, so "(N" is N + 1).
local function at_least(bound, floor)
  if floor <= 0 then
    return bound
  end
  local from
  if bound == '-inf' then
    return string.format('%.0f', floor)
  elseif string.sub(bound, 1, 1) == '(' then
    from = tonumber(string.sub(bound, 2)) + 1
  else
    from = tonumber(bound)
  end
  if from >= floor then
    return bound
  end
  return string.format('%.0f', floor)
end
"""
)

# ARGV: node, holder, keys (joined by newlines), name, timestamp, ms, maxlen,
# room ("" for the default room; absent from an older node, which has none),
# "1" if the nickname is verified (ext; absent from an older node).
# Returns the stream id of the register event, 0 if the name is taken (-2
# if by a verified holder), -1 if this node holds no lease. A holder that
# already holds a name (its earlier claim's reply was lost) leaves it first,
# with its leave event. In a named room the claim also records that the
# node follows it, so a node that lost its lease (and so its place in
# `following`) is found again by its reaper. A verified claim's event
# carries `v` = 1, which an older node ignores.
CLAIM = (
    _PREAMBLE
    + """
local node, holder, joined, name, ts, ms, maxlen, room, flag = unpack(ARGV)
if not leased(node) then
  return -1
end
local keys = split(joined)
local other = taken(keys, holder)
if other then
  return refusal(other)
end
local previous = drop(holder)
if previous then
  emit(maxlen, 'k', 'leave', 'o', holder, 'n', previous, 't', ts, 'ms', ms)
end
hold(holder, keys, joined)
redis.call('HSET', display, holder, name)
redis.call('ZADD', online, redis.call('INCR', joinseq), holder)
redis.call('SADD', holders_of(node), holder)
mark_verified(holder, flag)
if room and room ~= '' then
  follow(node, room)
end
if flag == '1' then
  return emit(maxlen, 'k', 'register', 'o', holder, 'n', name, 't', ts, 'ms', ms,
              'v', '1')
end
return emit(maxlen, 'k', 'register', 'o', holder, 'n', name, 't', ts, 'ms', ms)
"""
).encode()

# ARGV: node, holder, keys (joined by newlines), name, timestamp, ms, maxlen,
# room (unused: CLAIM's arguments), "1" if the new nickname is verified.
# Returns the stream id of the change event, 0 if the name is taken (or is
# exactly the current one, as v2: then held by the holder itself), -2 if so
# by a verified holder, -1 if the holder's name is gone (lease lost). The
# event of a verified rename carries `v` = 1, as CLAIM's.
RENAME = (
    _PREAMBLE
    + """
local node, holder, joined, name, ts, ms, maxlen, room, flag = unpack(ARGV)
local old_joined = redis.call('HGET', held, holder)
if not old_joined or not leased(node) then
  return -1
end
local old = redis.call('HGET', display, holder)
if old == name then
  return refusal(holder)
end
local keys = split(joined)
local other = taken(keys, holder)
if other then
  return refusal(other)
end
unhold(holder, old_joined)
hold(holder, keys, joined)
redis.call('HSET', display, holder, name)
mark_verified(holder, flag)
if flag == '1' then
  return emit(maxlen, 'k', 'change', 'o', holder, 'old', old, 'n', name,
              't', ts, 'ms', ms, 'v', '1')
end
return emit(maxlen, 'k', 'change', 'o', holder, 'old', old, 'n', name,
            't', ts, 'ms', ms)
"""
).encode()

# ARGV: node, holder, timestamp, ms, maxlen. Returns 1 if a name was released
# (and its leave sent), 0 if the holder held none. Safe to repeat.
RELEASE = (
    _PREAMBLE
    + """
local node, holder, ts, ms, maxlen = unpack(ARGV)
redis.call('SREM', holders_of(node), holder)
local name = drop(holder)
if not name then
  return 0
end
emit(maxlen, 'k', 'leave', 'o', holder, 'n', name, 't', ts, 'ms', ms)
return 1
"""
).encode()

# ARGV: node, holder, name, content, timestamp, ms, entry head, entry tail,
# maxlen, send_id ("" for none), window ms, most send_ids kept, the mark:
# "1" for an operator's announcement, "v" for a verified nickname's message
# (ext), else "0" (absent from an older node).
# The history entry is head .. id .. tail (chatbox.wire.messages makes its shape).
# Returns the new id; {id, entry} of the original when `name` sent `send_id`
# within the window (nothing is stored or told); or -1 if the holder no
# longer holds `name`. Checking and storing in one script is what makes a
# retry after a lost reply (RedisInDoubt) safe. An announcement has no
# holder ("") and needs no name: its event carries `a` = 1, a verified
# nickname's message `a` = v; an older node shows either as an ordinary
# message (one from before verified nicknames reads only `a` = 1).
POST = (
    _PREAMBLE
    + """
local node, holder, name, content, ts, ms, head, tail, maxlen, send_id, window,
      most, mark = unpack(ARGV)
local announce = mark == '1'
if not announce and (redis.call('HGET', display, holder) ~= name
                     or not leased(node)) then
  return -1
end
local sent = false
local now = 0
if send_id ~= '' then
  sent = name .. '\\n' .. send_id
  now = now_ms()
  -- Forget what has expired, a bounded number per call.
  local expired = redis.call('ZRANGE', sendexp, '-inf', now, 'BYSCORE',
                             'LIMIT', 0, 100)
  if #expired > 0 then
    redis.call('HDEL', sends, unpack(expired))
    redis.call('ZREM', sendexp, unpack(expired))
  end
  local earlier = redis.call('HGET', sends, sent)
  if earlier then
    local entry = redis.call('ZRANGE', history, earlier, earlier, 'BYSCORE')
    return {tonumber(earlier), entry[1] or false}
  end
end
local id = redis.call('INCR', msgid)
redis.call('ZADD', history, id, head .. id .. tail)
if announce or mark == 'v' then
  emit(maxlen, 'k', 'message', 'o', holder, 'n', name, 'c', content, 't', ts,
       'ms', ms, 'id', id, 'a', mark)
else
  emit(maxlen, 'k', 'message', 'o', holder, 'n', name, 'c', content, 't', ts,
       'ms', ms, 'id', id)
end
if sent then
  redis.call('HSET', sends, sent, id)
  redis.call('ZADD', sendexp, now + tonumber(window), sent)
  local over = redis.call('ZCARD', sendexp) - tonumber(most)
  if over > 0 then
    local oldest = redis.call('ZRANGE', sendexp, 0, over - 1)
    redis.call('HDEL', sends, unpack(oldest))
    redis.call('ZREM', sendexp, unpack(oldest))
  end
end
return id
"""
).encode()

# ARGV: holder, name, timestamp, ms, maxlen. A typing hint (ext) in the
# stream, between the events, if the holder still holds `name`; returns 1 if
# sent, else 0. It carries `t` and `ms` like every entry, though no client
# sees them: an older node reads `t` of every entry before it looks at the
# kind, and would log a traceback for each hint of a newer one.
TYPING = (
    _PREAMBLE
    + """
local holder, name, ts, ms, maxlen = unpack(ARGV)
if redis.call('HGET', display, holder) ~= name then
  return 0
end
emit(maxlen, 'k', 'typing', 'o', holder, 'n', name, 't', ts, 'ms', ms)
return 1
"""
).encode()

# Registered nicknames in the whole cluster.
ONLINE_COUNT = (
    _PREAMBLE
    + """
return redis.call('ZCARD', online)
"""
).encode()

# ARGV: highest score, lowest score, limit (ZRANGE BYSCORE bounds, "(" for
# exclusive), byte budget (0: none), "1" for a page's first slice, which
# also lists who is online and keeps its newest entry whatever the budget,
# then the room's retention: most messages kept (0: no limit) and the
# oldest time kept (epoch ms, "" for no age limit), so what it expired is
# left out at once, whether or not a purge has removed it yet.
# Returns {newest entries first, as many as fit the budget,
# 1 if the budget cut them short else 0, online names in order or {},
# the verified ones among them in the same order or {}}. A
# `get` calls it for slices of a few hundred entries, so no one call holds
# Redis (and every other node) for long, and only what is returned crosses.
PAGE = (
    _PREAMBLE
    + """
local high, low, limit, budget, first, most, oldest = unpack(ARGV)
budget = tonumber(budget)
low = at_least(low, kept_from(most, oldest))
local entries = redis.call('ZRANGE', history, high, low, 'BYSCORE', 'REV',
                           'LIMIT', 0, limit)
local cut = 0
if budget > 0 then
  local total = 0
  for i = 1, #entries do
    total = total + #entries[i]
    if total > budget and (i > 1 or first ~= '1') then
      for j = #entries, i, -1 do
        entries[j] = nil
      end
      cut = 1
      break
    end
  end
end
local names, marked = {}, {}
if first == '1' then
  local listed = redis.call('ZRANGE', online, 0, -1)
  local any = redis.call('EXISTS', verified) == 1
  for first = 1, #listed, 500 do
    local last = math.min(first + 499, #listed)
    local chunk = redis.call('HMGET', display, unpack(listed, first, last))
    local flags = any and redis.call('SMISMEMBER', verified,
                                     unpack(listed, first, last))
    for i = 1, #chunk do
      if chunk[i] then
        names[#names + 1] = chunk[i]
        if flags and flags[i] == 1 then
          marked[#marked + 1] = chunk[i]
        end
      end
    end
  end
end
return {entries, cut, names, marked}
"""
).encode()

# ARGV: node, lease ms, timestamp, ms, maxlen, joining ("1" or "0").
# First reaps every node whose lease has run out (this one too), sending a
# leave for each of their names; being in one script, each dead node is
# reaped exactly once, whichever node gets there first. Then renews this
# node's lease, or, if it was reaped and is not joining, says so.
# Returns {1 or 0 (lease lost), names released, messages in history}.
HEARTBEAT = (
    _PREAMBLE
    + """
local node, lease, ts, ms, maxlen, joining = unpack(ARGV)
local now = now_ms()
local released = 0
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', now)) do
  released = released + reap(dead, ts, ms, maxlen)
end
if joining ~= '1' and not redis.call('ZSCORE', nodes, node) then
  return {0, released, redis.call('ZCARD', history)}
end
redis.call('ZADD', nodes, now + tonumber(lease), node)
return {1, released, redis.call('ZCARD', history)}
"""
).encode()

# ARGV: node, timestamp, ms, maxlen. A node leaving cleanly: its names are
# released with their leaves and its lease is given up.
RETIRE = (
    _PREAMBLE
    + """
local node, ts, ms, maxlen = unpack(ARGV)
return reap(node, ts, ms, maxlen)
"""
).encode()

# ARGV: node, room name, most rooms (0: no limit). Run on the room's keys
# when a node loads a named room: counts the room among the cluster's rooms
# (refused past the limit, in the same step as the count) and records that
# this node follows it. Returns -1 if the node holds no lease, 0 if the room
# is new and the cluster has `most` rooms already, else {the stream's last
# generated id, entries ever added to it, messages in history, the newest
# message's time in epoch ms or -1, entries trimmed from it so far}: where
# this node starts reading (STREAM_STATE says how trimmed is counted).
FOLLOW = (
    _PREAMBLE
    + """
local node, name, most = unpack(ARGV)
if not leased(node) then
  return -1
end
most = tonumber(most)
if most > 0 and redis.call('SISMEMBER', rooms, name) == 0
   and redis.call('SCARD', rooms) >= most then
  return 0
end
follow(node, name)
local last, added, length = '0-0', 0, 0
if redis.call('EXISTS', events) == 1 then
  local info = redis.call('XINFO', 'STREAM', events)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      last = info[i + 1]
    elseif info[i] == 'entries-added' then
      added = info[i + 1]
    elseif info[i] == 'length' then
      length = info[i + 1]
    end
  end
end
local xdels = tonumber(redis.call('GET', events .. ':deleted') or '0')
local trimmed = added - length - xdels
return {last, added, redis.call('ZCARD', history), last_activity(), trimmed}
"""
).encode()

# ARGV: node, room name, timestamp, ms, maxlen. A node unloading a named
# room: whatever names it still holds there are released (a leave each), it
# no longer follows the room, and a room nobody follows that never held a
# message is forgotten. Returns {names released, 1 if forgotten else 0}.
UNFOLLOW = (
    _PREAMBLE
    + """
local node, name, ts, ms, maxlen = unpack(ARGV)
local released = reap_here(node, ts, ms, maxlen)
redis.call('SREM', followers, node)
redis.call('SREM', following_of(node), name)
return {released, forget_if_empty(name)}
"""
).encode()

# A room's registered nicknames and its newest message's time (epoch ms, or
# -1): GET /rooms on a node that has not loaded the room.
ROOM_SUMMARY = (
    _PREAMBLE
    + """
return {redis.call('ZCARD', online), last_activity()}
"""
).encode()

# KEYS: event streams (any number). For each, the last generated id,
# entries ever added, entries kept, the oldest entry's id, the newest id
# removed by XDEL and how many entries XDEL removed (DELETE's and the
# purge's count, `<stream>:deleted`) ({"0-0", 0, 0, "0-0", "0-0", 0} if it
# does not exist): what was added and neither kept nor XDELed was trimmed.
# A reader that has handled every entry up to an id knows how many were
# added by then; the entries added since must all still be kept, or some
# were trimmed before it read them; DELETE's XDEL removes some too, which
# the reader tells apart with the other two (chatbox.cluster.reader).
# (Redis 7.0's max-deleted-entry-id tells of XDEL only, not of trimming.)
STREAM_STATE = b"""
local states = {}
for i, stream in ipairs(KEYS) do
  local xdels = tonumber(redis.call('GET', stream .. ':deleted') or '0')
  if redis.call('EXISTS', stream) == 0 then
    states[i] = {'0-0', 0, 0, '0-0', '0-0', xdels}
  else
    local info = redis.call('XINFO', 'STREAM', stream)
    local state = {}
    for j = 1, #info, 2 do
      state[info[j]] = info[j + 1]
    end
    local first = state['first-entry']
    states[i] = {state['last-generated-id'], state['entries-added'], state['length'],
                 first and first[1] or '0-0', state['max-deleted-entry-id'], xdels}
  end
end
return states
"""

# ARGV: timestamp, ms, maxlen, then the ids to remove, ascending. An
# operator's removal, in one step: each id's history entry goes (so no
# `get` returns it from here on), and so does the stream entry of its
# `message` event, which holds its content too; one `delete` event tells
# every node which went. Returns the ids removed (those that were there).
#
# Finding a message's stream entry without reading the stream: a room's
# `message` entries are in the order of their ids (POST draws the id and
# appends the event in one step), so `find` bisects the stream by its ids'
# times, each probe reading forward from a time to the first `message`
# entry (a few entries; a long run of joins and leaves is read once). Some
# 40 probes find one message in a stream of any length, with no key or
# write added to POST. A message from before the stream's oldest entry
# (trimmed, or imported) has none to remove.
#
# The delete event carries `o` and `n` (empty) as every event has, since a
# node of the release before deletions reads both before it looks at the
# kind (it then skips the event); `count` and `last` are the history's size
# and newest time after the removal, so every node reports them exactly.
DELETE = (
    _PREAMBLE
    + """
local ts, ms, maxlen = ARGV[1], ARGV[2], ARGV[3]

local function ms_of(stream_id)
  return tonumber(string.match(stream_id, '^(%d+)'))
end

local function bound(millis)
  return string.format('%.0f', millis)
end

-- The first `message` entry from XRANGE bound `start` up to ms `high`:
-- its stream id and message id, or nil. Every emit puts `k` first. Most
-- entries are messages, so a few are read first, then more at a time.
local function next_message(start, high)
  local count = 4
  while true do
    local chunk = redis.call('XRANGE', events, start, high, 'COUNT', count)
    for _, entry in ipairs(chunk) do
      local f = entry[2]
      if f[1] == 'k' and f[2] == 'message' then
        for j = 3, #f - 1, 2 do
          if f[j] == 'id' then
            return entry[1], tonumber(f[j + 1])
          end
        end
      end
    end
    if #chunk < count then
      return nil
    end
    start = '(' .. chunk[#chunk][1]
    count = 64
  end
end

-- The stream id of message `target`'s entry, or nil; nothing before XRANGE
-- bound `start` is it. The next message first (ids are deleted in order, a
-- flood's often one after another), then bisecting by time: between `lo`
-- and `hi` (ms) lies the entry if it is there, `start` within `lo`.
local function find(target, start)
  local found, id = next_message(start, '+')
  if not found or id > target then
    return nil
  elseif id == target then
    return found
  end
  start = '(' .. found
  local last = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)
  local lo, hi = ms_of(found), ms_of(last[1][1])
  while lo < hi do
    local mid = math.floor((lo + hi) / 2) + 1
    local found, id = next_message(bound(mid), bound(hi))
    if found and id == target then
      return found
    elseif found and id < target then
      start, lo = '(' .. found, ms_of(found)
    else
      hi = mid - 1
    end
  end
  while true do
    local found, id = next_message(start, bound(hi))
    if not found or id > target then
      return nil
    end
    if id == target then
      return found
    end
    start = '(' .. found
  end
end

local removed = {}
local start = '-'
for i = 4, #ARGV do
  local id = tonumber(ARGV[i])
  if redis.call('ZREMRANGEBYSCORE', history, id, id) > 0 then
    removed[#removed + 1] = ARGV[i]
    local found = find(id, start)
    if found then
      redis.call('XDEL', events, found)
      redis.call('INCR', events .. ':deleted')
      start = '(' .. found
    end
  end
end
if #removed == 0 then
  return {}
end
local ids = table.concat(removed, ',')
local count = redis.call('ZCARD', history)
local newest = last_activity()
emit(maxlen, 'k', 'delete', 'o', '', 'n', '', 'ids', ids, 'count', count,
     'last', newest, 't', ts, 'ms', ms)
return removed
"""
).encode()

# Moderation (chatbox.cluster.moderation). The snapshot (`moderation`) is
# JSON `{"through": stream id, "seen": n, "state": ...}`: the state with
# every order up to `through` applied, `seen` being the orders stream's
# entries-added then. Nothing here reads it: the nodes do.

# The snapshot, or false when there is none.
MODERATION_LOAD = (
    _PREAMBLE
    + """
return redis.call('GET', moderation) or false
"""
).encode()

# ARGV: order (JSON), snapshot (JSON, the submitting node's state through
# the id it has applied up to), that id, most orders kept. Appends the order
# to the orders stream, and writes the snapshot in the same step if the node
# had applied every order before this one (otherwise it would lose one that
# the node had not read yet: the next submit from a node that has writes it).
# Returns {the order's stream id, 1 if the snapshot was written else 0}.
MODERATION_SUBMIT = (
    _PREAMBLE
    + """
local order, snapshot, through, most = unpack(ARGV)
local last = '0-0'
if redis.call('EXISTS', orders) == 1 then
  local info = redis.call('XINFO', 'STREAM', orders)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      last = info[i + 1]
    end
  end
end
local wrote = 0
if last == through then
  redis.call('SET', moderation, snapshot)
  wrote = 1
end
local id = redis.call('XADD', orders, 'MAXLEN', '~', most, '*', 'o', order)
return {id, wrote}
"""
).encode()

# ARGV: the last order id this node applied, how many orders the stream had
# then (entries-added), most to return. Returns {1, entries after it (at
# most `most`)}, or {0, entries-added, length} when orders this node had
# not applied are gone (trimmed past it, or Redis lost the stream): it
# reloads the snapshot.
MODERATION_POLL = (
    _PREAMBLE
    + """
local after, seen, most = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if redis.call('EXISTS', orders) == 0 then
  if seen > 0 then
    return {0, 0, 0}
  end
  return {1, {}}
end
local info = redis.call('XINFO', 'STREAM', orders)
local added, length = 0, 0
for i = 1, #info, 2 do
  if info[i] == 'entries-added' then
    added = info[i + 1]
  elseif info[i] == 'length' then
    length = info[i + 1]
  end
end
if added < seen or added - length > seen then
  return {0, added, length}
end
return {1, redis.call('XRANGE', orders, '(' .. after, '+', 'COUNT', most)}
"""
).encode()

# ARGV: after (an id), most entries to return, then the room's retention as
# PAGE takes it (most messages kept, oldest time kept or ""). Returns
# {entry, id, entry, id, ...}: the oldest entries with id > after that the
# retention keeps, in id order. A page of an unbounded read (export,
# backup), which goes on from the last id it got.
ENTRIES = (
    _PREAMBLE
    + """
local after, limit, most, oldest = unpack(ARGV)
local low = at_least('(' .. after, kept_from(most, oldest))
return redis.call('ZRANGE', history, low, '+inf', 'BYSCORE', 'LIMIT', 0, limit,
                  'WITHSCORES')
"""
).encode()

# ARGV: room name ("" for the default room), then each message's entry
# split around its id (head, tail; chatbox.cluster.room.entry_template).
# Appends them after the history with new ids, in order, all in one step
# (`msgid` only rises, so an id is never handed out twice), as durably as
# POST. No event: clients see them at their next `get`; the stream carries
# no `message` entry for them (DELETE and the purge find none, and need
# none). A named room holding a message is one of the cluster's rooms.
# Returns the ids.
IMPORT = (
    _PREAMBLE
    + """
local ids = {}
for i = 2, #ARGV - 1, 2 do
  local id = redis.call('INCR', msgid)
  redis.call('ZADD', history, id, ARGV[i] .. id .. ARGV[i + 1])
  ids[#ids + 1] = id
end
if ARGV[1] ~= '' and #ids > 0 then
  redis.call('SADD', rooms, ARGV[1])
end
return ids
"""
).encode()

# ARGV: the node purging ("" for none: no lease checked), the room's
# retention as PAGE takes it (most messages kept, oldest time kept or ""),
# most history entries to remove, where to go on reading the stream (an
# XRANGE bound: "-" at first), the highest id removed by earlier calls of
# this purge (0 at first), most stream entries to read.
# The purge of expired messages (chatbox.cluster.purge), a batch at a time
# so no call holds Redis long: the oldest expired entries leave `history`;
# then the stream is read on from where the last call stopped, and every
# `message` entry up to the highest id removed so far is XDELed (a room's
# message entries are in id order, POST drawing the id and appending the
# event in one step, so those of expired messages come first and the read
# stops at the first kept one). No event: clients stopped seeing them at
# once (PAGE). `msgid` is untouched, so ids are never handed out again.
# With a node, it must hold the purge lease, or nothing is done: a node
# whose lease ran out (paused, partitioned) cannot purge beside the one
# that took it over. Returns -1 then; else {history entries removed,
# stream entries removed, where to go on reading, the highest id removed
# so far, 1 if the stream holds no message entry of an id removed so far
# past that place}.
EXPIRE = (
    _PREAMBLE
    + """
local node, most, oldest, batch, cursor, upto, scan = unpack(ARGV)
if node ~= '' and redis.call('GET', purge) ~= node then
  return -1
end
upto = tonumber(upto)
scan = tonumber(scan)
local removed = 0
local floor = kept_from(most, oldest)
if floor > 0 then
  local below = '(' .. string.format('%.0f', floor)
  local gone = redis.call('ZRANGE', history, '-inf', below, 'BYSCORE',
                          'LIMIT', 0, batch, 'WITHSCORES')
  if #gone > 0 then
    local last = tonumber(gone[#gone])
    removed = redis.call('ZREMRANGEBYSCORE', history, '-inf', gone[#gone])
    if last > upto then
      upto = last
    end
  end
end
local xdeleted = 0
local done = 0
local read = 0
while read < scan and done == 0 do
  local chunk = redis.call('XRANGE', events, cursor, '+', 'COUNT', 256)
  local doomed = {}
  for _, entry in ipairs(chunk) do
    local f = entry[2]
    if f[1] == 'k' and f[2] == 'message' then
      local id = 0
      for j = 3, #f - 1, 2 do
        if f[j] == 'id' then
          id = tonumber(f[j + 1])
          break
        end
      end
      if id > upto then
        done = 1
        break
      end
      doomed[#doomed + 1] = entry[1]
    end
    cursor = '(' .. entry[1]
    read = read + 1
  end
  if #doomed > 0 then
    xdeleted = xdeleted + redis.call('XDEL', events, unpack(doomed))
  end
  if #chunk < 256 then
    done = 1
  end
end
if xdeleted > 0 then
  redis.call('INCRBY', events .. ':deleted', xdeleted)
end
return {removed, xdeleted, cursor, string.format('%.0f', upto), done}
"""
).encode()

# ARGV: node, what ("take", "renew" or "release"), lease ms. The purge
# lease (`purge`, chatbox.cluster.purge): take sets it to the node if no
# node holds it (or renews it if this one does); renew and release act
# only if the node holds it. Returns 1 if the node holds it after "take"
# or "renew" (or held it until "release"), else 0.
PURGE_LEASE = (
    _PREAMBLE
    + """
local node, what, ms = unpack(ARGV)
local holder = redis.call('GET', purge)
if what == 'take' and not holder then
  redis.call('SET', purge, node, 'PX', ms)
  return 1
end
if holder ~= node then
  return 0
end
if what == 'release' then
  redis.call('DEL', purge)
else
  redis.call('PEXPIRE', purge, ms)
end
return 1
"""
).encode()

# The names of every named room of the cluster (`rooms`): what the purge
# walks besides the default room, whatever node follows them.
ROOM_NAMES = (
    _PREAMBLE
    + """
return redis.call('SMEMBERS', rooms)
"""
).encode()
