-- Moves up to COUNT new entries of a subscription's consumer group into its
-- pending hash (due now) and acknowledges them, atomically, so an entry is
-- either still unread by the group or in the pending hash, never lost.
-- KEYS: events stream, pending hash. ARGV: group, start id, count.
local made = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], ARGV[2], 'MKSTREAM')
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], 'relay', 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
if not reply then
  return {}
end
local entries = reply[1][2]
for _, e in ipairs(entries) do
  redis.call('HSET', KEYS[2], e[1], '0:0')
  redis.call('XACK', KEYS[1], ARGV[1], e[1])
end
return entries
