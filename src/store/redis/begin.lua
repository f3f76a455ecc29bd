-- What a poll reads before it fetches (src/poller/mod.rs), in one call: an
-- idle poll costs this script and the poll status it writes. Inside it a
-- lapsed lease costs three commands (SET, XREVRANGE, MGET), a held one
-- four (PEXPIRE too): with the EVALSHA and the status SET, an idle poll
-- runs at most six commands (INFO commandstats counts these too).
-- KEYS: lease string, epoch string, events stream, loading marker,
--       reconcile marker (one hash tag).
-- ARGV: holder, lease time-to-live (ms).
-- Returns {0} while another holder's lease is alive; else takes or extends
-- the lease and returns {1, epoch ('' for none), the stream's last ID
-- ('0-0' for none), loading (0/1), reconcile requested (0/1)}.
-- SET NX GET (Redis 7) takes a free lease and reads a held one at once;
-- an older Redis refuses it, and GET then SET reads and takes it instead.
local v = redis.pcall('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
if type(v) == 'table' and v.err then
  v = redis.call('GET', KEYS[1])
  if not v then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  end
end
if v then
  if v ~= ARGV[1] then
    return {0}
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local top = '0-0'
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if last[1] then
  top = last[1][1]
end
-- Epoch, loading and reconcile markers (strings) in one command.
local m = redis.call('MGET', KEYS[2], KEYS[4], KEYS[5])
return {1, m[1] or '', top, m[2] and 1 or 0, m[3] and 1 or 0}
