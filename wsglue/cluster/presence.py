"""
Presence kept in Redis for a cluster (C{--redis}): which sessions are
online, and the starts and ends of L{wsglue.cluster.registry.
ClusterRegistry.watchPresence}, exactly once each for the whole cluster,
even when a process dies (SIGKILL, a lost host) while it holds sessions or
while it waits for a session's grace to run out.

Keys (C{P} is the cluster's prefix C{wsglue:<db>:}):

  - C{P ph:<sid>}: the set of the node ids that hold a connection of the
    session (its holders).
  - C{P pn:<node>}: the set of the sessions that node holds (what it
    contributes), so that a dead node's part can be taken back.
  - C{P online}: the set of the sessions present (started, not ended).
  - C{P due}: a sorted set of the sessions with no holder left, scored by
    when their grace is over.
  - C{P nodes}: the live nodes, scored by when their heartbeat expires
    (kept by the registry's heartbeat).

Lua scripts change them atomically:

  - L{JOIN}: a node holds sessions; those not online become online (they
    started); a session within its grace is simply taken off C{due}.
  - L{LEAVE}: a node no longer holds a session; the last holder puts it on
    C{due}.
  - L{REAP}: run by every node at every heartbeat (and when one of its own
    graces is over): the part of each dead node (expired in C{nodes}) is
    taken back (only by a node that has reached Redis for long enough that
    the others had time to beat after an outage of Redis itself), its sessions left without holder are put on C{due} with the
    grace counted from the node's expiry; then the sessions due are taken
    off C{online}, and returned to the one caller that took them: that node
    calls C{ended}.  Each call does a bounded amount of work.

Keys are named inside the scripts from the prefix: one Redis (or a primary
with replicas), not Redis Cluster.
"""

from __future__ import annotations

from wsglue.cluster.streams import Script

# KEYS: pn:<node>, online, due, nodes.  ARGV: node id, its expiry, the
# prefix, then the session ids.  Returns {1 if the node was not in nodes
# (new, or taken for dead), the sessions that started}.
JOIN = """
local node = ARGV[1]
local fresh = redis.call('ZADD', KEYS[4], 'NX', ARGV[2], node)
local started = {fresh}
for i = 4, #ARGV do
  local sid = ARGV[i]
  redis.call('SADD', ARGV[3] .. 'ph:' .. sid, node)
  redis.call('SADD', KEYS[1], sid)
  redis.call('ZREM', KEYS[3], sid)
  if redis.call('SADD', KEYS[2], sid) == 1 then
    started[#started + 1] = sid
  end
end
return started
"""

# KEYS: ph:<sid>, pn:<node>, due.  ARGV: the session id, the node id, when
# its grace is over.  Returns 1 when this was its last holder.
LEAVE = """
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('SREM', KEYS[1], ARGV[2]) == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
  return 1
end
return 0
"""

# KEYS: nodes, due, online.  ARGV: now, the grace in seconds, the most
# sessions to handle, the prefix, 1 to take back the part of dead nodes (0:
# only end the sessions due).  Returns the sessions that ended (the caller
# calls ended for each).
REAP = """
local now = ARGV[1]
local budget = tonumber(ARGV[3])
local prefix = ARGV[4]
local dead = {}
if ARGV[5] == '1' then
  dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'WITHSCORES', 'LIMIT', 0, 10)
end
for i = 1, #dead, 2 do
  if budget <= 0 then
    break
  end
  local node = dead[i]
  local due = tonumber(dead[i + 1]) + tonumber(ARGV[2])
  local part = prefix .. 'pn:' .. node
  local sids = redis.call('SPOP', part, budget)
  budget = budget - #sids
  for _, sid in ipairs(sids) do
    local holders = prefix .. 'ph:' .. sid
    if redis.call('SREM', holders, node) == 1 and redis.call('SCARD', holders) == 0 then
      redis.call('ZADD', KEYS[2], due, sid)
    end
  end
  if redis.call('SCARD', part) == 0 then
    redis.call('ZREM', KEYS[1], node)
  end
end
local ended = {}
if budget <= 0 then
  return ended
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, budget)
for _, sid in ipairs(due) do
  redis.call('ZREM', KEYS[2], sid)
  if redis.call('SCARD', prefix .. 'ph:' .. sid) == 0 and redis.call('SREM', KEYS[3], sid) == 1 then
    ended[#ended + 1] = sid
  end
end
return ended
"""

joinScript = Script(JOIN)
leaveScript = Script(LEAVE)
reapScript = Script(REAP)

__all__ = ["JOIN", "LEAVE", "REAP", "joinScript", "leaveScript", "reapScript"]
