"""Server-side scripts: every write to a session and its indexes happens inside one of these.

Every key a script touches is one of its KEYS, and all of them are in one hash slot on a
Redis Cluster (a session and its shard's indexes and counters; see `KeySpace`). Per-session
scripts take KEYS = [session hash, live index, archive index, status counts, event counters]
(see `KeySpace.script_keys`). Statuses are stored as JSON text
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

# The history rule of `sessions.history`, to the letter: entries are the top-level elements of
# the stored JSON text, identified by a leading {"id":"...","timestamp":"..."}; never re-encoded.
HISTORY = r"""
local HISTORY_FIELDS = {conversation_history = 1, function_calls = 2}

local function skip_string(text, pos)
  while true do
    local k = string.find(text, '["\\]', pos)
    if not k then return nil end
    if string.sub(text, k, k) == '\\' then pos = k + 2 else return k + 1 end
  end
end

local function elements(text)
  if string.sub(text, 1, 1) ~= '[' then return nil end
  local items, depth, start, pos = {}, 0, nil, 1
  while true do
    local i = string.find(text, '[%[%]{}",]', pos)
    if not i then return nil end
    local c = string.sub(text, i, i)
    if c == '"' then
      pos = skip_string(text, i + 1)
      if not pos then return nil end
      if depth == 1 and not start then start = i end
    else
      pos = i + 1
      if c == '[' or c == '{' then
        depth = depth + 1
        if depth == 2 and not start then start = i end
      elseif c == ']' or c == '}' then
        depth = depth - 1
        if depth == 0 then
          if start then items[#items + 1] = string.sub(text, start, i - 1) end
          if '[' .. table.concat(items, ',') .. ']' ~= text then return nil end
          return items
        end
      elseif depth == 1 then
        if start then items[#items + 1] = string.sub(text, start, i - 1) end
        start = nil
      end
    end
  end
end

local function entry_id(el) return string.match(el, '^{"id":"([^"\\]*)"') end
local function entry_time(el)
  return string.match(el, '^{"id":"[^"\\]*","timestamp":"([^"\\]*)"')
end

local function covers(winner, other)
  local n = #other
  if n <= 2 then return true end
  if #winner < n or string.sub(winner, 1, n - 1) ~= string.sub(other, 1, n - 1) then
    return false
  end
  local c = string.sub(winner, n, n)
  return c == ']' or c == ','
end

-- `winner` with the identified entries of `other` it lacks, and how many were added.
local function merge(winner, other)
  if not other or covers(winner, other) then return winner, 0 end
  local mine, theirs = elements(winner), elements(other)
  if not mine or not theirs then return winner, 0 end
  local seen = {}
  for _, el in ipairs(mine) do local id = entry_id(el) if id then seen[id] = true end end
  local added = 0
  for _, el in ipairs(theirs) do
    local id = entry_id(el)
    if id and not seen[id] then
      seen[id] = true
      local at, t = #mine + 1, entry_time(el)
      if t then
        for index, x in ipairs(mine) do
          local xt = entry_time(x)
          if xt and xt > t then at = index break end
        end
      end
      table.insert(mine, at, el)
      added = added + 1
    end
  end
  if added == 0 then return winner, 0 end
  return '[' .. table.concat(mine, ',') .. ']', added
end
"""

SAVE_ONE = r"""
-- Compare-and-set one snapshot into `key`: 1 applied; 0 fenced (older than what is stored,
-- or an ended or archived session) with nothing new; 2 fenced, but its history added entries
-- the store lacked; 3 the same into an archived call, which is to be archived again.
local function save_one(key, idx, cid, epoch_s, seq_s, new, activity, flat, now, live_ttl,
                        ended_ttl)
  local cur = redis.call('HMGET', key, 'epoch', 'seq', 'status', 'last_activity', '_archived',
                         'conversation_history', 'function_calls')
  local epoch, seq = tonumber(epoch_s), tonumber(seq_s)
  local old = false
  if cur[1] or cur[3] then
    local e, s = tonumber(cur[1]) or 0, tonumber(cur[2]) or 0
    old = cur[3] and status_name(cur[3]) or false
    local fenced = cur[5] or e > epoch or (e == epoch and s >= seq)
        or (old == 'ended' and new ~= 'ended')
    if fenced then
      local added = 0
      for i = 1, #flat - 1, 2 do
        local slot = HISTORY_FIELDS[flat[i]]
        if slot and cur[5 + slot] then
          local merged, n = merge(cur[5 + slot], flat[i + 1])
          if n > 0 then
            redis.call('HSET', key, flat[i], merged)
            added = added + n
          end
        end
      end
      if added == 0 then return 0 end
      if not cur[5] then return 2 end
      redis.call('HDEL', key, '_archived')
      redis.call('ZADD', idx[2], now, cid)
      redis.call('PEXPIRE', key, ended_ttl)
      return 3
    end
    for i = 1, #flat - 1, 2 do
      local slot = HISTORY_FIELDS[flat[i]]
      if slot and cur[5 + slot] then flat[i + 1] = merge(flat[i + 1], cur[5 + slot]) end
    end
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
    + HISTORY
    + SAVE_ONE
    + r"""
local flat = {}
for i = 9, #ARGV do flat[#flat + 1] = ARGV[i] end
return save_one(KEYS[1], {KEYS[2], KEYS[3], KEYS[4]}, ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                ARGV[5], flat, ARGV[6], ARGV[7], ARGV[8])
"""
)

# A batch of one shard's snapshots in one call; it also counts them in the shard's events.
# KEYS: live index, archive index, status counts, event counters, then each snapshot's session
# ARGV: now_us, live_ttl_ms, ended_ttl_ms, then per snapshot:
#       cid, epoch, seq, status, activity_us, fields (name NUL text NUL name NUL text ...; stored
#       texts are JSON, which never holds a raw NUL)
SAVE_MANY = (
    PRELUDE
    + HISTORY
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

local outcomes, applied, merged = {}, 0, 0
local indexes = {KEYS[1], KEYS[2], KEYS[3]}
for b = 4, #ARGV, 6 do
  local n = #outcomes + 1
  local outcome = save_one(KEYS[4 + n], indexes, ARGV[b], ARGV[b + 1], ARGV[b + 2],
                           ARGV[b + 3], ARGV[b + 4], split_fields(ARGV[b + 5]),
                           ARGV[1], ARGV[2], ARGV[3])
  outcomes[n] = outcome
  if outcome == 1 then applied = applied + 1 elseif outcome > 1 then merged = merged + 1 end
end
if applied > 0 then redis.call('HINCRBY', KEYS[4], 'snapshots_applied', applied) end
if applied < #outcomes then
  redis.call('HINCRBY', KEYS[4], 'snapshots_stale', #outcomes - applied)
end
if merged > 0 then redis.call('HINCRBY', KEYS[4], 'snapshots_stale_merged', merged) end
return outcomes
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

# ARGV: cid, now_us, max_age_us, live_ttl_ms, holder_json (or '': keep the stored holder)
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
if ARGV[5] and ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'session_id', ARGV[5]) end
transition(KEYS[2], KEYS[3], KEYS[4], ARGV[1], old, 'active', activity, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'ok', redis.call('HGETALL', KEYS[1])}
"""
)

# ARGV: cid, now_us, reason_json, ended_at_json, ended_ttl_ms, expected epoch (or '': any)
END = (
    PRELUDE
    + r"""
local cur = redis.call('HMGET', KEYS[1], 'status', 'epoch')
local st = cur[1]
if not st then return 'missing' end
if st == '"ended"' then return 'already' end
if ARGV[6] and ARGV[6] ~= '' and cur[2] ~= ARGV[6] then return 'moved' end
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

# Ends the candidates of one shard that are still idle past the cutoff (their score in the
# live index did not move since they were picked) and not ended.
# KEYS: live index, archive index, status counts, then each candidate's session
# ARGV: cutoff_us, now_us, reason_json, ended_at_json, ended_ttl_ms, then each candidate's id
EXPIRE_BATCH = (
    PRELUDE
    + r"""
local ended, vanished = {}, 0
for i = 6, #ARGV do
  local cid, key = ARGV[i], KEYS[i - 2]
  local score = redis.call('ZSCORE', KEYS[1], cid)
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    local st = redis.pcall('HGET', key, 'status')
    if type(st) ~= 'string' then
      redis.call('ZREM', KEYS[1], cid)
      vanished = vanished + 1
    else
      local old = status_name(st)
      if old == 'ended' then
        vanished = vanished + 1
      else
        redis.call('HSET', key, 'status', '"ended"', 'end_reason', ARGV[3], 'ended_at', ARGV[4])
        redis.call('HINCRBY', key, 'seq', 1)
        redis.call('PEXPIRE', key, ARGV[5])
        ended[#ended + 1] = cid
      end
      transition(KEYS[1], KEYS[2], KEYS[3], cid, old, 'ended', ARGV[2], ARGV[2])
    end
  end
end
return {ended, vanished}
"""
)

# KEYS: session, archive index, event counters, durations list
# ARGV: cid, retention_ms, duration_s, durations_kept, then counter, amount, ... (added to the
#       event counters once, with the flag: the call's model usage)
MARK_ARCHIVED = r"""
local cur = redis.call('HMGET', KEYS[1], 'status', '_archived', '_counted')
if cur[1] ~= '"ended"' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if cur[2] then return 2 end
redis.call('HSET', KEYS[1], '_archived', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if cur[3] then return 1 end  -- archived again after late history: counted the first time
redis.call('HSET', KEYS[1], '_counted', '1')
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
