-- Retention: removes a stream's entries before ARGV[1] (XTRIM MINID) and
-- records the last removed ID in the marker, in one step; the marker only
-- ever rises, so a reader's 410 check never passes a cursor into a gap.
-- KEYS: events stream, trimmed marker. ARGV: first kept ID. Returns the
-- number of entries removed.
local before = redis.call('XREVRANGE', KEYS[1], '(' .. ARGV[1], '-', 'COUNT', 1)
if #before == 0 then
  return 0
end
local last = before[1][1]
local function parts(id)
  local stamp, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(stamp), tonumber(seq)
end
local removed = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
local old = redis.call('GET', KEYS[2])
local raise = true
if old then
  local os, oq = parts(old)
  local ls, lq = parts(last)
  raise = ls > os or (ls == os and lq > oq)
end
if raise then
  redis.call('SET', KEYS[2], last)
end
return removed
