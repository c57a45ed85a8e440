"""The Lua scripts the Redis transport runs: each is one atomic step on the server.

Publishing checks idempotency and backpressure and appends in one script, so the backlog bound holds
exactly however many producers publish at once. Dead-lettering acknowledges first and does nothing if
the entry was no longer pending (another consumer that claimed it already dealt with it), so a message
is dead-lettered and counted once. Admission changes its counters only inside a script, so concurrent
workers never overshoot the staleness bound.

Entries are ``{"d": payload}`` (``PAYLOAD_FIELD``); dead letters add their reason and origin.
"""
from __future__ import annotations

from antiphon.transport.base import DEAD_LETTER

PAYLOAD_FIELD = b"d"

# backlog(stream, limit, only_group) -> count, group name ('' for none). XINFO GROUPS gives each group's
# pending and lag; lag is nil when the server cannot compute it (entries deleted after the group's
# position, or Redis 6.2), and then the undelivered entries are counted with XRANGE, at most `limit`.
_BACKLOG_FUNCTION = """
local function backlog(stream, limit, only)
  if redis.call('EXISTS', stream) == 0 then return 0, '' end
  local worst, worst_name = -1, ''
  for _, flat in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local g = {}
    for i = 1, #flat, 2 do g[flat[i]] = flat[i + 1] end
    if only == '' or g['name'] == only then
      local lag = g['lag']
      if not lag then
        lag = #redis.call('XRANGE', stream, '(' .. g['last-delivered-id'], '+', 'COUNT', limit)
      end
      if g['pending'] + lag > worst then worst, worst_name = g['pending'] + lag, g['name'] end
    end
  end
  if worst < 0 then return redis.call('XLEN', stream), '' end
  return worst, worst_name
end
"""

# KEYS: stream [, idempotency key]. ARGV: payload, max_unconsumed (0: unbounded), dedupe ttl.
# -> {'ok', entry id} or {'full', backlog, group}.
PUBLISH = _BACKLOG_FUNCTION + """
if KEYS[2] then
  local first = redis.call('GET', KEYS[2])
  if first then return {'ok', first} end
end
local max = tonumber(ARGV[2])
if max > 0 then
  local n, name = backlog(KEYS[1], max, '')
  if n >= max then return {'full', n, name} end
end
local id = redis.call('XADD', KEYS[1], '*', 'd', ARGV[1])
if KEYS[2] then redis.call('SET', KEYS[2], id, 'EX', ARGV[3]) end
return {'ok', id}
"""

# KEYS: stream. ARGV: limit of the XRANGE fallback, group ('' every group). -> {count, group}.
BACKLOG = _BACKLOG_FUNCTION + """
local n, name = backlog(KEYS[1], tonumber(ARGV[1]), ARGV[2])
return {n, name}
"""

# KEYS: stream, counters. ARGV: group, id, reason. Acknowledge, and count only if it was still pending,
# so a drop redelivered to another replica is counted once.
DROP = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'dropped', 1)
redis.call('HINCRBY', KEYS[2], 'dropped:' .. ARGV[3], 1)
return 1
"""

# KEYS: stream, dead stream, counters. ARGV: id, payload, reason, key, group ('' none), maxlen, unix time.
DEAD_LETTER_MOVE = """
if ARGV[5] ~= '' and redis.call('XACK', KEYS[1], ARGV[5], ARGV[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'd', ARGV[2], 'reason', ARGV[3],
                      'source', KEYS[1], 'source_id', ARGV[1], 'group', ARGV[5], 'at', ARGV[7])
redis.call('HINCRBY', KEYS[3], '%(total)s', 1)
redis.call('HINCRBY', KEYS[3], '%(total)s:' .. ARGV[4], 1)
return id
""" % {"total": DEAD_LETTER}

# KEYS: stream. Trims below the oldest entry some group has not acknowledged: a group's oldest pending
# entry, or (nothing pending) the one after its last delivered. Ids are "ms-seq"; both parts are exact
# in Lua's doubles (ms < 2^53).
TRIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local best_ms, best_seq
for _, flat in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local g = {}
  for i = 1, #flat, 2 do g[flat[i]] = flat[i + 1] end
  local id, step = g['last-delivered-id'], 1
  if g['pending'] > 0 then id, step = redis.call('XPENDING', KEYS[1], g['name'])[2], 0 end
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq) + step
  if not best_ms or ms < best_ms or (ms == best_ms and seq < best_seq) then best_ms, best_seq = ms, seq end
end
if not best_ms then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%.0f-%.0f', best_ms, best_seq))
"""

# KEYS: admission hash. ARGV: max_staleness, batch_size. -> {ticket or -1 when full, version}.
# The bound is antiphon.transport.admission's rule.
ADMIT = """
local admitted = tonumber(redis.call('HGET', KEYS[1], 'admitted') or '0')
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if admitted >= (tonumber(ARGV[1]) + version + 1) * tonumber(ARGV[2]) then
  return {-1, version}
end
redis.call('HINCRBY', KEYS[1], 'admitted', 1)
return {redis.call('HINCRBY', KEYS[1], 'ticket', 1) - 1, version}
"""
