-- Moves up to COUNT new entries of a subscription's consumer group into its
-- pending hash (due now), atomically, so an entry is either still unread by
-- the group or in the pending hash, never lost. NOACK: the pending hash is
-- the record of what is claimed, so the group keeps no entries of its own
-- (no per-entry XACK), and all fields go in one HSET.
-- Returns the entries packed in one string (parsed by entries.rs,
-- `parse_packed`): per entry its ID, its field count, then each field and
-- value, every item written as <byte length>:<bytes>.
-- KEYS: events stream, pending hash. ARGV: group, start id, count.
local made = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], ARGV[2], 'MKSTREAM')
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], 'relay', 'COUNT', ARGV[3], 'NOACK', 'STREAMS', KEYS[1], '>')
if not reply then
  return ''
end
local entries = reply[1][2]
local fields = {}
local out = {}
local function put(s)
  out[#out + 1] = #s .. ':' .. s
end
for _, e in ipairs(entries) do
  fields[#fields + 1] = e[1]
  fields[#fields + 1] = '0:0'
  put(e[1])
  put(tostring(#e[2] / 2))
  for _, v in ipairs(e[2]) do
    put(v)
  end
end
if #fields > 0 then
  redis.call('HSET', KEYS[2], unpack(fields))
end
return table.concat(out)
