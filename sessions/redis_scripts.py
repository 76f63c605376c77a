"""Server-side scripts: every write to a session and its indexes happens inside one of these.

Per-session scripts take KEYS = [session hash, live index, archive index,
status counts, event counters] (see `KeySpace.script_keys`). Statuses are stored as JSON text
('"active"'); `last_activity` as integer microseconds. Numbers that must keep
full precision (microsecond times) are passed through as strings, never
re-formatted by Lua.
"""

from __future__ import annotations

PRELUDE = r"""
local function status_name(json_text)
  return string.sub(json_text, 2, -2)
end

-- Keep the status counters and the two indexes in step with a status change.
local function transition(live, archive, counts, cid, old, new, activity_us, now_us)
  if old ~= new then
    if old then redis.call('HINCRBY', counts, old, -1) end
    redis.call('HINCRBY', counts, new, 1)
  end
  if new == 'ended' then
    redis.call('ZREM', live, cid)
    if old ~= 'ended' then redis.call('ZADD', archive, now_us, cid) end
  else
    redis.call('ZADD', live, activity_us, cid)
  end
end

local function later(a, b)
  if tonumber(a) >= tonumber(b) then return a end
  return b
end
"""

SAVE_ONE = r"""
-- Compare-and-set one snapshot into `key`; 1 if applied, 0 if older than what is stored.
local function save_one(key, idx, cid, epoch_s, seq_s, new, activity, flat, now, live_ttl,
                        ended_ttl)
  local cur = redis.call('HMGET', key, 'epoch', 'seq', 'status', 'last_activity', '_archived')
  local epoch, seq = tonumber(epoch_s), tonumber(seq_s)
  local old = false
  if cur[1] or cur[3] then
    if cur[5] then return 0 end
    local e, s = tonumber(cur[1]) or 0, tonumber(cur[2]) or 0
    if e > epoch or (e == epoch and s >= seq) then return 0 end
    old = cur[3] and status_name(cur[3]) or false
    if old == 'ended' and new ~= 'ended' then return 0 end
    if cur[4] and tonumber(cur[4]) then activity = later(cur[4], activity) end
  end
  if #flat > 0 then redis.call('HSET', key, unpack(flat)) end
  redis.call('HSET', key, 'epoch', epoch_s, 'seq', seq_s, 'status', '"' .. new .. '"',
             'last_activity', activity)
  transition(idx[1], idx[2], idx[3], cid, old, new, activity, now)
  if new == 'ended' then
    redis.call('PEXPIRE', key, ended_ttl)
  else
    redis.call('PEXPIRE', key, live_ttl)
  end
  return 1
end
"""

# ARGV: cid, epoch, seq, status, activity_us, now_us, live_ttl_ms, ended_ttl_ms, field, value, ...
SAVE = (
    PRELUDE
    + SAVE_ONE
    + r"""
local flat = {}
for i = 9, #ARGV do flat[#flat + 1] = ARGV[i] end
return save_one(KEYS[1], {KEYS[2], KEYS[3], KEYS[4]}, ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                ARGV[5], flat, ARGV[6], ARGV[7], ARGV[8])
"""
)

# A batch in one call. Session keys are built here from the prefix (so this script, like
# EXPIRE_BATCH, is not for Redis Cluster).
# KEYS: live index, archive index, status counts
# ARGV: prefix, now_us, live_ttl_ms, ended_ttl_ms, then per snapshot:
#       cid, epoch, seq, status, activity_us, fields (name NUL text NUL name NUL text ...; stored
#       texts are JSON, which never holds a raw NUL)
SAVE_MANY = (
    PRELUDE
    + SAVE_ONE
    + r"""
local function split_fields(blob)
  local flat, pos = {}, 1
  while pos <= #blob do
    local stop = string.find(blob, '\0', pos, true) or (#blob + 1)
    flat[#flat + 1] = string.sub(blob, pos, stop - 1)
    pos = stop + 1
  end
  return flat
end

local applied = {}
for b = 5, #ARGV, 6 do
  local flat = split_fields(ARGV[b + 5])
  applied[#applied + 1] = save_one(ARGV[1] .. ARGV[b], KEYS, ARGV[b], ARGV[b + 1],
                                   ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], flat,
                                   ARGV[2], ARGV[3], ARGV[4])
end
return applied
"""
)

# KEYS: session, live index; ARGV: cid, now_us, max_idle_us, live_ttl_ms
TOUCH_LOAD = r"""
local cur = redis.call('HMGET', KEYS[1], 'status', 'last_activity')
if not cur[1] then return false end
if cur[1] ~= '"ended"' then
  local activity = tonumber(cur[2]) or 0
  local now = tonumber(ARGV[2])
  if now > activity and now - activity <= tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], 'last_activity', ARGV[2])
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
  end
end
return redis.call('HGETALL', KEYS[1])
"""

# ARGV: cid, now_us, max_age_us, live_ttl_ms
CLAIM = (
    PRELUDE
    + r"""
local cur = redis.call('HMGET', KEYS[1], 'status', 'last_activity')
if not cur[1] then return {'missing'} end
local old = status_name(cur[1])
if old == 'ended' or old == 'error' then return {old} end
local activity = cur[2] or '0'
if tonumber(ARGV[2]) - tonumber(activity) > tonumber(ARGV[3]) then return {'expired'} end
activity = later(ARGV[2], activity)
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HINCRBY', KEYS[1], 'resumed_count', 1)
redis.call('HINCRBY', KEYS[5], 'resumes', 1)
redis.call('HSET', KEYS[1], 'seq', '0', 'status', '"active"', 'last_activity', activity)
transition(KEYS[2], KEYS[3], KEYS[4], ARGV[1], old, 'active', activity, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'ok', redis.call('HGETALL', KEYS[1])}
"""
)

# ARGV: cid, now_us, reason_json, ended_at_json, ended_ttl_ms
END = (
    PRELUDE
    + r"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st == '"ended"' then return 'already' end
redis.call('HSET', KEYS[1], 'status', '"ended"', 'end_reason', ARGV[3], 'ended_at', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'seq', 1)
transition(KEYS[2], KEYS[3], KEYS[4], ARGV[1], status_name(st), 'ended', ARGV[2], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 'ended'
"""
)

# ARGV: cid, now_us, live_ttl_ms, new_status_or_empty, field, value, ...
UPDATE = (
    PRELUDE
    + r"""
local cur = redis.call('HMGET', KEYS[1], 'status', 'last_activity')
if not cur[1] then return 'missing' end
local old = status_name(cur[1])
if old == 'ended' then return 'ended' end
if #ARGV >= 5 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
local activity = later(ARGV[2], cur[2] or '0')
local new = old
if ARGV[4] ~= '' then new = ARGV[4] end
redis.call('HSET', KEYS[1], 'status', '"' .. new .. '"', 'last_activity', activity)
redis.call('HINCRBY', KEYS[1], 'seq', 1)
transition(KEYS[2], KEYS[3], KEYS[4], ARGV[1], old, new, activity, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 'ok'
"""
)

# ARGV: cid, replace(0|1), now_us, live_ttl_ms, status, activity_us, max_live (0: none),
#       field, value, ...
CREATE = (
    PRELUDE
    + r"""
local cur = redis.call('HMGET', KEYS[1], 'status', 'epoch', '_archived')
local epoch = 1
local max_live = tonumber(ARGV[7])
if max_live > 0 and not cur[1] and redis.call('ZCARD', KEYS[2]) >= max_live then
  return {'full'}
end
if cur[1] then
  if ARGV[2] ~= '1' and (cur[1] ~= '"ended"' or not cur[3]) then
    return {'exists', status_name(cur[1]), cur[3] and '1' or '0'}
  end
  epoch = (tonumber(cur[2]) or 0) + 1
  redis.call('HINCRBY', KEYS[4], status_name(cur[1]), -1)
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('HSET', KEYS[1], 'epoch', tostring(epoch), 'seq', '0')
transition(KEYS[2], KEYS[3], KEYS[4], ARGV[1], false, ARGV[5], ARGV[6], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'created', tostring(epoch)}
"""
)

# ARGV: cid
DELETE = (
    PRELUDE
    + r"""
local st = redis.pcall('HGET', KEYS[1], 'status')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if type(st) == 'string' then redis.call('HINCRBY', KEYS[4], status_name(st), -1) end
return redis.call('DEL', KEYS[1])
"""
)

# KEYS: live index, archive index, status counts
# ARGV: prefix, cutoff_us, now_us, limit, reason_json, ended_at_json, ended_ttl_ms
EXPIRE_BATCH = (
    PRELUDE
    + r"""
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
local ended, vanished = {}, 0
for _, cid in ipairs(ids) do
  local key = ARGV[1] .. cid
  local st = redis.pcall('HGET', key, 'status')
  if type(st) ~= 'string' then
    redis.call('ZREM', KEYS[1], cid)
    vanished = vanished + 1
  else
    local old = status_name(st)
    if old == 'ended' then
      vanished = vanished + 1
    else
      redis.call('HSET', key, 'status', '"ended"', 'end_reason', ARGV[5], 'ended_at', ARGV[6])
      redis.call('HINCRBY', key, 'seq', 1)
      redis.call('PEXPIRE', key, ARGV[7])
      ended[#ended + 1] = cid
    end
    transition(KEYS[1], KEYS[2], KEYS[3], cid, old, 'ended', ARGV[3], ARGV[3])
  end
end
return {ended, vanished}
"""
)

# KEYS: session, archive index, event counters, durations list
# ARGV: cid, retention_ms, duration_s, durations_kept, then counter, amount, ... (added to the
#       event counters once, with the flag: the call's model usage)
MARK_ARCHIVED = r"""
local cur = redis.call('HMGET', KEYS[1], 'status', '_archived')
if cur[1] ~= '"ended"' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if cur[2] then return 2 end
redis.call('HSET', KEYS[1], '_archived', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'archived', 1)
redis.call('LPUSH', KEYS[4], ARGV[3])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
for i = 5, #ARGV, 2 do redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: lock; ARGV: token. Deletes the lock only if this token holds it.
RELEASE_LOCK = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

ALL: dict[str, str] = {
    "save": SAVE,
    "save_many": SAVE_MANY,
    "touch_load": TOUCH_LOAD,
    "claim": CLAIM,
    "end": END,
    "update": UPDATE,
    "create": CREATE,
    "delete": DELETE,
    "expire_batch": EXPIRE_BATCH,
    "mark_archived": MARK_ARCHIVED,
    "release_lock": RELEASE_LOCK,
}
