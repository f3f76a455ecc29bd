-- What a poll reads before it fetches (src/poller/mod.rs), in one call: an
-- idle poll costs this script and the poll status it writes.
-- KEYS: lease string, epoch string, events stream, loading marker,
--       reconcile marker (one hash tag).
-- ARGV: holder, lease time-to-live (ms).
-- Returns {0} while another holder's lease is alive; else takes or extends
-- the lease and returns {1, epoch ('' for none), the stream's last ID
-- ('0-0' for none), loading (0/1), reconcile requested (0/1)}.
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
elseif v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  return {0}
end
local top = '0-0'
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if last[1] then
  top = last[1][1]
end
-- Epoch, loading and reconcile markers (strings) in one command.
local m = redis.call('MGET', KEYS[2], KEYS[4], KEYS[5])
return {1, m[1] or '', top, m[2] and 1 or 0, m[3] and 1 or 0}
