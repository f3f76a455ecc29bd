-- Atomic append of one sorted chunk for one target (src/poller/mod.rs commits;
-- see ARCHITECTURE.md).
-- KEYS: events stream, record index hash, lease string, epoch string,
--       records hash, stamps sorted set, trimmed marker, late sorted set
--       (one hash tag).
-- ARGV: holder, snapshot (0/1), observed (unix ms), epoch, the highest ID
--       this writer appended under that epoch ('' when none), keep records
--       (0/1), rebase (0/1: events.rs `reclassify` instead of `classify`),
--       then per record: id, stamp, deleted (0/1), data.
-- The index entry of a record points at its latest version's event:
-- `<stamp>[:deleted]`, plus `@<stream ID>` when that ID is not
-- `<stamp>-0` (a late event; lib.lua, run in front of this script, reads
-- and writes the grammar); an event whose previous version was late
-- names it in `previd`. With keep records, the late set holds the records
-- whose latest version is a late event (by stamp), and an update takes the
-- record out of the stamps set when its old version's event was trimmed
-- (trim.lua keeps such versions in the records hash and the stamps set):
-- the record store (src/store/redis/records.rs) lists latest versions from
-- the stream, the late set and the stamps set without the append copying
-- a record or writing a set on the common path.
-- Returns {created, updated, deleted, restored, duplicates, late, last ID,
-- regressions} (versions below the indexed stamp, counted apart from
-- duplicates: src/events.rs, AppendOutcome).
-- Re-running a chunk is a no-op: every version is checked against the index.
-- A last entry below the writer's highest ID means writes it saw
-- acknowledged are gone (a replica took over before receiving them). Their
-- IDs must never be issued again (a reader may have read them), so the
-- stream's last generated ID goes back up to the writer's highest and the
-- append is refused: the poller fetches the lost versions again, and they
-- come in as late events above every ID a reader may hold (docs/sync.md,
-- "Store failovers").
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('LEASELOST the lease is held by another instance')
end
-- A table whose epoch is gone or new lost its data (see poller/epoch.rs):
-- appending the poll's records would invent changes.
if redis.call('GET', KEYS[4]) ~= ARGV[4] then
  return redis.error_reply('EPOCHCHANGED the store lost this table since the poll began')
end
-- The last entry, and the last generated ID, above which new IDs go: it
-- stays above the last entry when the newest entries were deleted (or the
-- ID was raised below). One XINFO gives both; a new stream has neither.
local top_id, issued = '0-0', '0-0'
local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
if not info.err then
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      issued = info[i + 1]
    elseif info[i] == 'last-entry' and info[i + 1] then
      top_id = info[i + 1][1]
    end
  end
end
if above(top_id, issued) then
  issued = top_id
end
if ARGV[5] ~= '' and above(ARGV[5], top_id) then
  if above(ARGV[5], issued) then
    if redis.call('EXISTS', KEYS[1]) == 1 then
      redis.call('XSETID', KEYS[1], ARGV[5])
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', '0', ARGV[5], 'op', '')
    end
  end
  return redis.error_reply('TAILLOST ' .. top_id .. ' ' .. ARGV[5])
end
local top_stamp, top_seq = parts(issued)
local n = {created = 0, updated = 0, deleted = 0, restored = 0}
local dups, late, regressions = 0, 0, 0
local keep = ARGV[6] == '1'
local rebase = ARGV[7] == '1'
-- Whether the event `id` is at or below the trimmed marker (read once).
local gone = trimmed_by(KEYS[7])
-- The index entries of the whole chunk in one HMGET per 500 records rather
-- than an HGET per record: an overlap window of versions the index holds
-- (a new holder's first poll) costs a command or two, not one a record.
-- A record twice in the chunk sees its earlier version's entry (`written`).
local held, written = {}, {}
do
  local ids = {}
  for i = 8, #ARGV, 4 do
    ids[#ids + 1] = ARGV[i]
  end
  for from = 1, #ids, 500 do
    local got = redis.call('HMGET', KEYS[2], unpack(ids, from, math.min(from + 499, #ids)))
    for k = 1, #got do
      held[from + k - 1] = got[k]
    end
  end
end
for i = 8, #ARGV, 4 do
  local rid, stamp, del, data = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local prev = written[rid]
  if prev == nil then
    prev = held[(i - 4) / 4]
  end
  local op, prev_stamp, prev_at = nil, '', nil
  if not prev and del == '1' then
    -- First seen already deleted (archived): src/events.rs, classify.
    op = 'deleted'
  elseif not prev then
    op = 'created'
  else
    local was_deleted
    prev_stamp, was_deleted, prev_at = entry_decode(prev)
    local differs = tonumber(stamp) ~= tonumber(prev_stamp) or (del == '1') ~= was_deleted
    if tonumber(stamp) > tonumber(prev_stamp) or (rebase and differs) then
      if del == '1' and not was_deleted then
        op = 'deleted'
      elseif del == '0' and was_deleted then
        op = 'restored'
      else
        op = 'updated'
      end
    end
  end
  if op then
    if tonumber(stamp) > top_stamp then
      top_stamp, top_seq = tonumber(stamp), 0
    else
      top_seq = top_seq + 1
      late = late + 1
    end
    top_id = string.format('%d-%d', top_stamp, top_seq)
    local entry = entry_encode(stamp, del == '1', top_seq > 0 and top_id or nil)
    if prev_at then
      redis.call('XADD', KEYS[1], top_id,
        'op', op, 'record', rid, 'stamp', stamp, 'prev', prev_stamp,
        'snapshot', ARGV[2], 'observed', ARGV[3], 'data', data, 'previd', prev_at)
    else
      redis.call('XADD', KEYS[1], top_id,
        'op', op, 'record', rid, 'stamp', stamp, 'prev', prev_stamp,
        'snapshot', ARGV[2], 'observed', ARGV[3], 'data', data)
    end
    redis.call('HSET', KEYS[2], rid, entry)
    written[rid] = entry
    if keep then
      if prev and gone(event_of(prev_stamp, prev_at)) then
        redis.call('ZREM', KEYS[6], rid)
      end
      if top_seq > 0 then
        redis.call('ZADD', KEYS[8], stamp, rid)
      elseif prev_at then
        redis.call('ZREM', KEYS[8], rid)
      end
    end
    n[op] = n[op] + 1
  elseif tonumber(stamp) < tonumber(prev_stamp) then
    regressions = regressions + 1
  else
    dups = dups + 1
    -- The version the index holds, seen again, whose event retention
    -- removed before the records hash kept such versions: a reconcile
    -- sweep puts it there, so lookups and listings find it.
    if keep and tonumber(stamp) == tonumber(prev_stamp) and gone(event_of(prev_stamp, prev_at)) then
      local copy = redis.call('HGET', KEYS[5], rid)
      if not copy or tonumber(stamp_of(copy)) ~= tonumber(stamp) then
        keep_trimmed({KEYS[5], KEYS[6], KEYS[8]}, rid, prev, stamp, data)
      end
    end
  end
end
return {n.created, n.updated, n.deleted, n.restored, dups, late, top_id, regressions}
