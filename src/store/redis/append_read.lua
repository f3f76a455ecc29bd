-- The read half of an append (src/store/redis/append.rs): what the planner
-- (src/store/plan.rs) decides a chunk by, in one round trip. No rule here.
-- KEYS: events stream, record index hash, lease string, epoch string,
--       trimmed marker (one hash tag).
-- ARGV: the chunk's record ids.
-- Returns {lease, epoch, last entry ID, last generated ID, trimmed marker,
-- then the index entry of each record}: a missing value is nil, a missing
-- stream's IDs are 0-0.
local top, issued = '0-0', '0-0'
local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
if not info.err then
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      issued = info[i + 1]
    elseif info[i] == 'last-entry' and info[i + 1] then
      top = info[i + 1][1]
    end
  end
end
local out = {redis.call('GET', KEYS[3]), redis.call('GET', KEYS[4]), top, issued,
  redis.call('GET', KEYS[5])}
-- One HMGET per 500 records rather than an HGET per record.
for from = 1, #ARGV, 500 do
  local got = redis.call('HMGET', KEYS[2], unpack(ARGV, from, math.min(from + 499, #ARGV)))
  for k = 1, #got do
    out[#out + 1] = got[k]
  end
end
return out
