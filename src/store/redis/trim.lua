-- Retention: removes a stream's entries before ARGV[1], at most ARGV[3] of
-- them per call (the caller repeats while the reply says more are left),
-- and records the last removed ID in the marker, in one step; the marker
-- only ever rises, so a reader's 410 check never passes a cursor into a gap.
-- With keep records (ARGV[2] = 1), each removed event's version first goes
-- into the records hash (a record's last removed version: previous values
-- of the event after it), and a record's latest version moves from the
-- late set to the stamps set, which lists latest versions whose events are
-- gone (src/store/redis/records.rs).
-- Without keep records, the `kept` marker goes: the copies and sets no
-- longer follow the stream, so keeping records again rebuilds them.
-- KEYS: events stream, trimmed marker, index, records hash, stamps set,
-- late set, kept marker. ARGV: first kept ID, keep (0/1), entries per call.
-- Returns {removed, 1 when entries before ARGV[1] are left}.
local function parts(id)
  local stamp, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(stamp), tonumber(seq)
end
local entries = redis.call('XRANGE', KEYS[1], '-', '(' .. ARGV[1], 'COUNT', ARGV[3])
if #entries == 0 then
  return {0, 0}
end
if ARGV[2] ~= '1' then
  redis.call('DEL', KEYS[7])
else
  for _, e in ipairs(entries) do
    local rid, stamp, data
    for i = 1, #e[2], 2 do
      local k, v = e[2][i], e[2][i + 1]
      if k == 'record' then rid = v elseif k == 'stamp' then stamp = v elseif k == 'data' then data = v end
    end
    local idx = redis.call('HGET', KEYS[3], rid)
    local at = idx and (string.match(idx, '@(.+)$') or (string.match(idx, '^(%d+)') .. '-0'))
    if at == e[1] then
      -- The index entry without its pointer: `<stamp>[:deleted]`.
      redis.call('HSET', KEYS[4], rid, string.match(idx, '^[^@]+') .. ' ' .. data)
      redis.call('ZADD', KEYS[5], stamp, rid)
      redis.call('ZREM', KEYS[6], rid)
    else
      redis.call('HSET', KEYS[4], rid, stamp .. ' ' .. data)
    end
  end
end
local last = entries[#entries][1]
local ls, lq = parts(last)
-- The stamp as text: a number would print as 1.2e+14 past 14 digits.
local removed = redis.call('XTRIM', KEYS[1], 'MINID', string.match(last, '^(%d+)-') .. '-' .. string.format('%d', lq + 1))
local old = redis.call('GET', KEYS[2])
local raise = true
if old then
  local os, oq = parts(old)
  raise = ls > os or (ls == os and lq > oq)
end
if raise then
  redis.call('SET', KEYS[2], last)
end
local more = 0
if #entries == tonumber(ARGV[3]) then
  more = 1
end
return {removed, more}
