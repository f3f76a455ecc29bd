-- The helpers the Redis scripts share, written once: src/store/redis/lua.rs
-- puts this file in front of each script that uses them (records.lua,
-- trim.lua and the pending trim in groups.rs), so the grammar
-- of stream IDs and of index entries has one reading in Lua (and one in
-- Rust: src/events.rs, StreamId and IndexEntry).
-- Only local functions: defining them costs a script nothing per record.

-- A number as digits: `tostring` would print 1.2e+14 past 14 digits.
local function d(n)
  return string.format('%d', n)
end

-- A stream ID `<stamp>-<seq>` as two numbers (nil for anything else).
local function parts(id)
  local stamp, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(stamp), tonumber(seq)
end

-- Whether stream ID a is above b.
local function above(a, b)
  local as, aq = parts(a)
  local bs, bq = parts(b)
  return as > bs or (as == bs and aq > bq)
end

-- The stream position just past `id`; its stamp stays the text it was.
local function past(id)
  local stamp, seq = string.match(id, '^(%d+)-(%d+)$')
  return stamp .. '-' .. d(tonumber(seq) + 1)
end

-- `gone(id)`: whether the event `id` is at or below the trimmed marker at
-- `key` (src/store/redis/keys.rs), which is read once, when first needed.
local function trimmed_by(key)
  local mark = nil
  return function(id)
    if mark == nil then
      local ts, tq = parts(redis.call('GET', key) or '0-0')
      mark = {ts, tq}
    end
    local s, q = parts(id)
    return s < mark[1] or (s == mark[1] and q <= mark[2])
  end
end

-- The value of field `name` of a stream entry {id, {field, value, ...}}.
local function field(entry, name)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == name then
      return f[i + 1]
    end
  end
  return nil
end

-- An index entry names a record's latest version: `<stamp>[:deleted]`,
-- plus `@<stream ID>` when its event is not `<stamp>-0` (a late event).
-- A kept copy in the records hash is that head, a space and the JSON.

-- An index entry without a late event, `<stamp>[:deleted]`, pointed at
-- the late event `id`.
local function late_at(head, id)
  return head .. '@' .. id
end

-- An index entry from its parts; `late` is the event's ID when it is not
-- `<stamp>-0`, else nil.
local function entry_encode(stamp, deleted, late)
  local entry = stamp
  if deleted then
    entry = stamp .. ':deleted'
  end
  if late then
    entry = late_at(entry, late)
  end
  return entry
end

-- An index entry's parts: its stamp (text), whether it is deleted, and its
-- late event's ID (nil when the event is `<stamp>-0`).
local function entry_decode(entry)
  local at = string.find(entry, '@', 1, true)
  local head, late = entry, nil
  if at then
    late = string.sub(entry, at + 1)
    head = string.sub(entry, 1, at - 1)
  end
  local colon = string.find(head, ':', 1, true)
  if colon then
    return string.sub(head, 1, colon - 1), true, late
  end
  return head, false, late
end

-- The ID of the event of the version whose stamp is `stamp` (text) and
-- late event `late` (nil for none).
local function event_of(stamp, late)
  return late or (stamp .. '-0')
end

-- The stamp (a number) of the version an index entry names, and the ID
-- of its event.
local function pointer(entry)
  local stamp, _, late = entry_decode(entry)
  return tonumber(stamp), event_of(stamp, late)
end

-- Whether an index entry points at a late event.
local function is_late(entry)
  return string.find(entry, '@', 1, true) ~= nil
end

-- The stamp (text) an index entry or a kept copy starts with.
local function stamp_of(entry)
  return string.match(entry, '^(%d+)')
end

-- The kept copy of a version: `head` (an index entry without its late
-- event, or a bare stamp) and the JSON.
local function copy_encode(head, data)
  return head .. ' ' .. data
end

-- The kept copy of the version an index entry names: the entry without its
-- late event, `<stamp>[:deleted]`, and the JSON.
local function copy_of(entry, data)
  return copy_encode(string.match(entry, '^[^@]+'), data)
end

-- Keeps the version an index entry names, whose event retention removed:
-- its copy goes into the records hash and the record into the stamps set,
-- out of the late set. `sets`: the keys of the records hash, the stamps
-- set and the late set.
local function keep_trimmed(sets, rid, entry, stamp, data)
  redis.call('HSET', sets[1], rid, copy_of(entry, data))
  redis.call('ZADD', sets[2], stamp, rid)
  redis.call('ZREM', sets[3], rid)
end

-- A kept copy's stamp as a number and its JSON (nil when it is not one).
local function copy_decode(copy)
  local space = string.find(copy, ' ', 1, true)
  if not space then
    return nil, nil
  end
  return tonumber(stamp_of(copy)), string.sub(copy, space + 1)
end
