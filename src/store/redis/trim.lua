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
-- The helpers (stream IDs, index entries, kept copies) are lib.lua's.
local entries = redis.call('XRANGE', KEYS[1], '-', '(' .. ARGV[1], 'COUNT', ARGV[3])
if #entries == 0 then
  return {0, 0}
end
if ARGV[2] ~= '1' then
  redis.call('DEL', KEYS[7])
else
  for _, e in ipairs(entries) do
    local rid, stamp, data = field(e, 'record'), field(e, 'stamp'), field(e, 'data')
    local idx = redis.call('HGET', KEYS[3], rid)
    if idx and select(2, pointer(idx)) == e[1] then
      -- The record's latest version: its copy says deleted too.
      keep_trimmed({KEYS[4], KEYS[5], KEYS[6]}, rid, idx, stamp, data)
    else
      redis.call('HSET', KEYS[4], rid, copy_encode(stamp, data))
    end
  end
end
local last = entries[#entries][1]
local removed = redis.call('XTRIM', KEYS[1], 'MINID', past(last))
local old = redis.call('GET', KEYS[2])
if not old or above(last, old) then
  redis.call('SET', KEYS[2], last)
end
local more = 0
if #entries == tonumber(ARGV[3]) then
  more = 1
end
return {removed, more}
