"""
Numbered streams kept in Redis (C{--redis} with continuity on): the
session streams and the broadcast stream of the whole cluster.

Each stream is two keys: a hash (C{e}: the epoch, C{o}: the last offset,
C{b}: the bytes kept) and a Redis Stream of its latest messages (fields
C{o}, C{n} the size, C{k} text or binary, C{d} the payload).  Lua scripts
change them atomically:

  - L{APPEND} numbers a message, keeps it (trimmed by count, bytes and
    age), refreshes the keys' time to live and PUBLISHes the envelope that
    carries the offset, in one step: every process delivers the same
    offset, and two processes sending to one session never deliver offsets
    out of order.  A session with no stream (no C{wsglue.v1} client said
    hello anywhere within the ttl) gets a plain envelope and no offset.
  - L{OPEN} makes both streams of a C{hello} if missing (a new epoch: a
    Redis that lost the keys never matches an old position), and reads the
    exact gaps after the client's positions, or nothing.
  - L{TAKE} notes a client's message id (the latest 1,000 per client).

Scripts run with EVALSHA, and with EVAL when Redis answers NOSCRIPT (a
restarted Redis), which loads them again.
"""

from __future__ import annotations

import hashlib
from typing import Any, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from wsglue.cluster.link import IRedisLink
from wsglue.streams import Message

Gap = List[Tuple[int, Message]]

# Drops the oldest entries of stream KEYS[2] (hash KEYS[1]) past the count
# ARGV[1], the bytes ARGV[2] (0: none) and the age ARGV[3] ms at time now.
_TRIM = """
local function trim(meta, xs, maxlen, maxbytes, ttl, now)
  local len = redis.call('XLEN', xs)
  local b = tonumber(redis.call('HGET', meta, 'b') or '0')
  while len > 0 do
    local first = redis.call('XRANGE', xs, '-', '+', 'COUNT', 1)[1]
    local ms = tonumber(string.match(first[1], '^(%d+)'))
    if len > maxlen or (maxbytes > 0 and b > maxbytes) or (ttl > 0 and ms <= now - ttl) then
      redis.call('XDEL', xs, first[1])
      b = redis.call('HINCRBY', meta, 'b', -tonumber(first[2][4]))
      len = len - 1
    else
      break
    end
  end
end
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: hash, stream.  ARGV: payload, kind (t|b), max count, max bytes,
# ttl ms, new epoch, channel, envelope head (stream), envelope head
# (plain), whether the keys expire (1|0), whether to make the stream if
# missing (1|0).  Returns {offset, epoch, receivers} or {0, '', receivers}.
APPEND = (
    _TRIM
    + """
local meta, xs = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[5])
if redis.call('EXISTS', meta) == 0 then
  if ARGV[11] ~= '1' then
    return {0, '', redis.call('PUBLISH', ARGV[7], ARGV[9] .. ARGV[1])}
  end
  redis.call('DEL', xs)
  redis.call('HSET', meta, 'e', ARGV[6], 'o', 0, 'b', 0)
end
local e = redis.call('HGET', meta, 'e')
local o = redis.call('HINCRBY', meta, 'o', 1)
local size = string.len(ARGV[1])
redis.call('HINCRBY', meta, 'b', size)
local id = redis.call('XADD', xs, '*', 'o', o, 'n', size, 'k', ARGV[2], 'd', ARGV[1])
trim(meta, xs, tonumber(ARGV[3]), tonumber(ARGV[4]), ttl, tonumber(string.match(id, '^(%d+)')))
if ARGV[10] == '1' and ttl > 0 then
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', xs, ttl)
end
local n = redis.call('PUBLISH', ARGV[7], ARGV[8] .. o .. ' ' .. e .. ' ' .. ARGV[1])
return {o, e, n}
"""
)

# KEYS: session hash, session stream, broadcast hash, broadcast stream.
# ARGV: new session epoch, new broadcast epoch, ttl ms, max count, max
# bytes, whether a resume follows (1|0), session epoch, session offset,
# broadcast epoch, broadcast offset.  Returns {session epoch, session
# offset, broadcast epoch, broadcast offset, recovered (1|0), session gap,
# broadcast gap}, a gap being {offset, kind, payload, ...}.
OPEN = (
    _TRIM
    + """
local ttl = tonumber(ARGV[3])
local t = now()
local function open(meta, xs, epoch, expires)
  if redis.call('EXISTS', meta) == 0 then
    redis.call('DEL', xs)
    redis.call('HSET', meta, 'e', epoch, 'o', 0, 'b', 0)
  end
  trim(meta, xs, tonumber(ARGV[4]), tonumber(ARGV[5]), ttl, t)
  if expires and ttl > 0 then
    redis.call('PEXPIRE', meta, ttl)
    redis.call('PEXPIRE', xs, ttl)
  end
  return redis.call('HGET', meta, 'e'), tonumber(redis.call('HGET', meta, 'o'))
end
local function gap(xs, e, last, epoch, offset)
  if epoch ~= e or offset < 0 or offset > last then
    return nil
  end
  local out = {}
  if offset == last then
    return out
  end
  local entries = redis.call('XREVRANGE', xs, '+', '-', 'COUNT', last - offset)
  if #entries ~= last - offset or tonumber(entries[#entries][2][2]) ~= offset + 1 then
    return nil
  end
  for i = #entries, 1, -1 do
    local f = entries[i][2]
    table.insert(out, tonumber(f[2]))
    table.insert(out, f[6])
    table.insert(out, f[8])
  end
  return out
end
local se, so = open(KEYS[1], KEYS[2], ARGV[1], true)
local be, bo = open(KEYS[3], KEYS[4], ARGV[2], false)
if ARGV[6] ~= '1' then
  return {se, so, be, bo, 0, {}, {}}
end
local sg = gap(KEYS[2], se, so, ARGV[7], tonumber(ARGV[8]))
local bg = gap(KEYS[4], be, bo, ARGV[9], tonumber(ARGV[10]))
if sg == nil or bg == nil then
  return {se, so, be, bo, 0, {}, {}}
end
return {se, so, be, bo, 1, sg, bg}
"""
)

# KEYS: the client's ids (a sorted set).  ARGV: the id, ttl ms.  Returns 1
# when the id is new.
TAKE = """
local added = redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[1])
if added == 1 then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1001)
end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return added
"""

# KEYS: keys to keep.  ARGV: ttl ms.  Refreshes the time to live of those
# that exist.
TOUCH = """
for i, key in ipairs(KEYS) do
  redis.call('PEXPIRE', key, ARGV[1])
end
return #KEYS
"""


# KEYS: the demo broadcast's lock.  ARGV: this process's id, ms.  Returns 1
# when this process holds it (takes it, or keeps it).
LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


class Script:
    """
    A Lua script run by its SHA1, and by its text when Redis does not know
    it yet.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def __call__(self, link: IRedisLink, keys: List[str], args: List[Any]) -> Deferred:
        d = link.execute("EVALSHA", self.sha, len(keys), *keys, *args)

        def noscript(f: Failure) -> Any:
            if "NOSCRIPT" in f.getErrorMessage():
                return link.execute("EVAL", self.source, len(keys), *keys, *args)
            return f

        d.addErrback(noscript)
        return d


appendScript = Script(APPEND)
openScript = Script(OPEN)
takeScript = Script(TAKE)
touchScript = Script(TOUCH)
leadScript = Script(LEAD)


def text(value: Any) -> str:
    """
    A reply (bytes: the link keeps replies undecoded) as text.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def gapOf(flat: Optional[List[Any]]) -> Gap:
    """
    The C{(offset, message)} pairs of a gap read by L{OPEN}.
    """
    out: Gap = []
    flat = flat or []
    for i in range(0, len(flat), 3):
        kind, data = flat[i + 1], flat[i + 2]
        if isinstance(data, str):
            data = data.encode("utf-8")
        out.append((int(flat[i]), data.decode("utf-8") if text(kind) == "t" else bytes(data)))
    return out


__all__ = ["APPEND", "LEAD", "OPEN", "TAKE", "TOUCH", "Gap", "Script", "gapOf", "text"]
