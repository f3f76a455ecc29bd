-- The write half of an append (src/store/redis/append.rs): applies the
-- writes the planner (src/store/plan.rs) decided from what
-- append_read.lua saw, if that is still what the store holds. No rule here.
-- KEYS: events stream, record index hash, lease string, epoch string,
--       trimmed marker, records hash, stamps set, late set (one hash tag).
-- ARGV: holder, epoch, the last generated ID and the trimmed marker as the
--       read saw them ('' for none), the ID to raise the stream's last
--       generated ID to ('' for none; then nothing else is written),
--       snapshot, observed, the number of events n and of index entries m,
--       the number k of records the plan took as new without reading the
--       index (0 when it read it) and their ids, then 7 per event: ID, op, record, stamp, prev, previd ('' for
--       none), data; then 2 per index entry: record, entry; then 4 per
--       write of the latest-record store: code, record, a, b, where `S`
--       takes the record out of the stamps set, `L` puts it in the late set
--       at stamp a, `l` takes it out, and `K` keeps the copy a at stamp b.
-- Refuses with LEASELOST or EPOCHCHANGED (the fences), or RACED when the
-- stream's last generated ID or the trimmed marker moved since the read,
-- or one of the k records is in the index (the caller reads and plans
-- again). Returns 1.
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('LEASELOST the lease is held by another instance')
end
if redis.call('GET', KEYS[4]) ~= ARGV[2] then
  return redis.error_reply('EPOCHCHANGED the store lost this table since the poll began')
end
local issued = '0-0'
local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
if not info.err then
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      issued = info[i + 1]
    end
  end
end
if issued ~= ARGV[3] or (redis.call('GET', KEYS[5]) or '') ~= ARGV[4] then
  return redis.error_reply('RACED the stream or its trimmed marker moved since the append read them')
end
if ARGV[5] ~= '' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('XSETID', KEYS[1], ARGV[5])
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '0', ARGV[5], 'op', '')
  end
  return 1
end
local k = tonumber(ARGV[10])
for from = 11, 10 + k, 500 do
  local got = redis.call('HMGET', KEYS[2], unpack(ARGV, from, math.min(from + 499, 10 + k)))
  for j = 1, #got do
    if got[j] then
      return redis.error_reply('RACED a record the append took as new is in the index')
    end
  end
end
local snapshot, observed = ARGV[6], ARGV[7]
local i = 11 + k
for _ = 1, tonumber(ARGV[8]) do
  local id, op, rid, stamp, prev, previd, data = unpack(ARGV, i, i + 6)
  if previd ~= '' then
    redis.call('XADD', KEYS[1], id, 'op', op, 'record', rid, 'stamp', stamp, 'prev', prev,
      'snapshot', snapshot, 'observed', observed, 'data', data, 'previd', previd)
  else
    redis.call('XADD', KEYS[1], id, 'op', op, 'record', rid, 'stamp', stamp, 'prev', prev,
      'snapshot', snapshot, 'observed', observed, 'data', data)
  end
  i = i + 7
end
local last = i + 2 * tonumber(ARGV[9]) - 1
for from = i, last, 400 do
  redis.call('HSET', KEYS[2], unpack(ARGV, from, math.min(from + 399, last)))
end
for j = last + 1, #ARGV, 4 do
  local code, rid = ARGV[j], ARGV[j + 1]
  if code == 'S' then
    redis.call('ZREM', KEYS[7], rid)
  elseif code == 'L' then
    redis.call('ZADD', KEYS[8], ARGV[j + 2], rid)
  elseif code == 'l' then
    redis.call('ZREM', KEYS[8], rid)
  elseif code == 'K' then
    redis.call('HSET', KEYS[6], rid, ARGV[j + 2])
    redis.call('ZADD', KEYS[7], ARGV[j + 3], rid)
    redis.call('ZREM', KEYS[8], rid)
  end
end
return 1
