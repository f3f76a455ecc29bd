-- The record store's reads (src/store/redis/records.rs), one library
-- loaded as one script: ARGV[1] names the function.
-- Every record's latest version is found through its index entry
-- (`<stamp>[:deleted][@<stream ID>]`): in the stream when its event is
-- there, else in the records hash (`<stamp>[:deleted] <JSON>`, written
-- by trim.lua; both read through lib.lua, run in front of this
-- script). Listings in stamp order merge three ordered sources:
-- stream entries `<stamp>-0` that are their record's latest version, the
-- late set (latest versions that are late events) and the stamps set
-- (latest versions whose events were trimmed); the append (its plan,
-- src/store/plan.rs, applied by append_apply.lua) and trim.lua keep each
-- record in exactly one of them.
-- KEYS: events, index, records, stamps, late, trimmed marker, kept marker
-- (one hash tag).

local gone = trimmed_by(KEYS[6])

-- The JSON of record `rid`'s version `stamp` whose event is `id`: from the
-- stream while the event is there, else from the records hash.
local function version(rid, stamp, id)
  if not gone(id) then
    local e = redis.call('XRANGE', KEYS[1], id, id)
    if #e > 0 and field(e[1], 'record') == rid then
      return field(e[1], 'data')
    end
    return nil
  end
  local v = redis.call('HGET', KEYS[3], rid)
  if v then
    local kept, json = copy_decode(v)
    if json and kept == stamp then
      return json
    end
  end
  return nil
end

-- Whether stream entry `e`, `<s>-0`, is still its record's latest version
-- (the index names that stamp and no late event).
local function latest_here(e, s)
  local idx = redis.call('HGET', KEYS[2], field(e, 'record'))
  return idx and not is_late(idx) and tonumber(stamp_of(idx)) == s, idx
end

local function top()
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #last > 0 then
    return last[1][1]
  end
  return '0-0'
end

local fn = {}

-- ARGV[2]: record id. Returns {index entry, JSON} or nil.
function fn.record()
  local rid = ARGV[2]
  local idx = redis.call('HGET', KEYS[2], rid)
  if not idx then
    return nil
  end
  local stamp, id = pointer(idx)
  local data = version(rid, stamp, id)
  if not data then
    return nil
  end
  return {idx, data}
end

-- ARGV[2..]: record id, stamp, event ID, repeated: old versions for
-- previous values. Returns one JSON (or false) per triple.
function fn.versions()
  local out = {}
  for i = 2, #ARGV, 3 do
    out[#out + 1] = version(ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]) or false
  end
  return out
end

-- ARGV[2..6]: until ('' for the stream's top stamp), after, wanted,
-- the stream position to read from ('' for after's), stream entries to
-- read at most. Reads latest versions with a stamp in (after, until] in
-- stamp order, up to the `frontier`: the stamp up to which all three
-- sources were read (the stream read stops at `wanted` versions or the
-- read limit, so no call is long). Returns {until, last ID, frontier,
-- the position to go on from ('' when the range is done), ids, index
-- entries, JSONs}; the caller calls again from the frontier while it
-- wants more.
function fn.page()
  local last_id = top()
  local untl = tonumber(ARGV[2]) or parts(last_id)
  local after, wanted, budget = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
  local found = {}
  -- The stream: entries `<stamp>-0` past `after` that are still their
  -- record's latest version (superseded ones are skipped).
  local from = ARGV[5]
  if from == '' then
    from = d(after + 1) .. '-0'
  end
  local frontier, next_from = untl, ''
  local taken = 0
  while true do
    local chunk = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', math.min(budget, math.max(wanted, 100)))
    if #chunk == 0 then
      break
    end
    local stop = false
    for _, e in ipairs(chunk) do
      local s, q = parts(e[1])
      if s > untl then
        stop = true
        break
      end
      budget = budget - 1
      if q == 0 then
        local here, idx = latest_here(e, s)
        if here then
          found[#found + 1] = {s, field(e, 'record'), idx, field(e, 'data')}
          taken = taken + 1
        end
      end
      if taken >= wanted or budget <= 0 then
        frontier = s
        next_from = past(e[1])
        stop = true
        break
      end
    end
    if stop then
      break
    end
    from = past(chunk[#chunk][1])
  end
  -- The late set and the stamps set, each in stamp order, to the frontier.
  -- A set read cut off at its limit lowers the frontier below its last
  -- score, so what lies past the cut is read by the next call.
  local cut = frontier
  local replies = {}
  local limit = math.min(wanted, 1000)
  for _, set in ipairs({KEYS[5], KEYS[4]}) do
    local reply = redis.call('ZRANGEBYSCORE', set, '(' .. d(after), d(frontier), 'WITHSCORES', 'LIMIT', 0, limit)
    if #reply / 2 >= limit then
      local last = tonumber(reply[#reply])
      -- Below the last score, so ties at it are read whole next time;
      -- at it when nothing else would move on.
      cut = math.min(cut, last - 1 > after and last - 1 or last)
    end
    replies[#replies + 1] = reply
  end
  for _, reply in ipairs(replies) do
    for i = 1, #reply, 2 do
      local rid = reply[i]
      local idx = redis.call('HGET', KEYS[2], rid)
      if idx and tonumber(reply[i + 1]) <= cut then
        local stamp, id = pointer(idx)
        local data = version(rid, stamp, id)
        if data and stamp > after and stamp <= cut then
          found[#found + 1] = {stamp, rid, idx, data}
        end
      end
    end
  end
  if cut < frontier then
    local kept = {}
    for _, f in ipairs(found) do
      if f[1] <= cut then
        kept[#kept + 1] = f
      end
    end
    found = kept
    frontier = cut
    next_from = d(cut + 1) .. '-0'
  end
  table.sort(found, function(a, b)
    if a[1] ~= b[1] then
      return a[1] < b[1]
    end
    return a[2] < b[2]
  end)
  local ids, idxs, datas = {}, {}, {}
  for i = 1, math.min(#found, wanted) do
    ids[#ids + 1] = found[i][2]
    idxs[#idxs + 1] = found[i][3]
    datas[#datas + 1] = found[i][4]
  end
  if #found > wanted then
    -- Enough: the caller stops here.
    frontier = found[wanted][1]
  end
  return {d(untl), last_id, d(frontier), next_from, ids, idxs, datas}
end

-- ARGV[2..5]: above, until, the stream position to go on from ('' to
-- start), entries to read at most. Counts records whose latest stamp is
-- in (above, until]. Returns {count, position to go on from or ''}: the
-- caller sums the counts of calls until the position is ''.
function fn.count()
  local above, untl, chunk = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
  local n = 0
  local from = ARGV[4]
  if from == '' then
    n = redis.call('ZCOUNT', KEYS[5], '(' .. ARGV[2], d(untl)) + redis.call('ZCOUNT', KEYS[4], '(' .. ARGV[2], d(untl))
    local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
    local kept = redis.call('GET', KEYS[7])
    -- Every stream entry is above `above` and nothing is above `until`:
    -- the stream holds the latest version of every record the sets do not.
    if kept == 'complete' and untl >= parts(top()) and (#first == 0 or parts(first[1][1]) > above) then
      local all = redis.call('HLEN', KEYS[2]) - redis.call('ZCARD', KEYS[5]) - redis.call('ZCARD', KEYS[4])
      return {n + all, ''}
    end
    from = d(above + 1) .. '-0'
  end
  local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', chunk)
  for _, e in ipairs(entries) do
    local s, q = parts(e[1])
    if s > untl then
      return {n, ''}
    end
    if q == 0 and latest_here(e, s) then
      n = n + 1
    end
  end
  if #entries < chunk then
    return {n, ''}
  end
  return {n, past(entries[#entries][1])}
end

-- ARGV[2..3]: the stream position to go on from ('' to start), entries
-- per call. Before `complete`: an index written before it pointed at late
-- events says `<stamp>` for a version whose event is a late one; give such
-- entries their `@<stream ID>`. Returns the position to go on from ('' at
-- the end).
function fn.point_late()
  local from = ARGV[2]
  if from == '' then
    from = '-'
  end
  local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', ARGV[3])
  for _, e in ipairs(entries) do
    local _, q = parts(e[1])
    if q > 0 then
      local rid = field(e, 'record')
      local idx = redis.call('HGET', KEYS[2], rid)
      if idx and not is_late(idx) and stamp_of(idx) == field(e, 'stamp') then
        redis.call('HSET', KEYS[2], rid, late_at(idx, e[1]))
      end
    end
  end
  if #entries < tonumber(ARGV[3]) then
    return ''
  end
  return past(entries[#entries][1])
end

-- ARGV[2..3]: the index position to go on from ('0' to start), entries
-- per call. Makes the sets complete for a table whose records were not
-- kept (or kept in the older layout, a full copy per record): the late set
-- from the index, the stamps set from the versions the records hash has
-- of trimmed events, and drops copies of versions the stream holds.
-- Returns {next position ('0' when done), records whose version is lost}.
function fn.complete()
  if ARGV[2] == '0' then
    redis.call('DEL', KEYS[4], KEYS[5])
  end
  local reply = redis.call('HSCAN', KEYS[2], ARGV[2], 'COUNT', ARGV[3])
  local missing = 0
  local kv = reply[2]
  for i = 1, #kv, 2 do
    local rid, idx = kv[i], kv[i + 1]
    local stamp, id = pointer(idx)
    if gone(id) then
      if version(rid, stamp, id) then
        redis.call('ZADD', KEYS[4], d(stamp), rid)
      else
        missing = missing + 1
      end
    else
      redis.call('HDEL', KEYS[3], rid)
      if is_late(idx) then
        redis.call('ZADD', KEYS[5], d(stamp), rid)
      end
    end
  end
  return {reply[1], missing}
end

return fn[ARGV[1]]()
