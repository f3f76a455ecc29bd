-- Compare-and-set of one subscription document on its version.
-- KEYS[1] the subscriptions hash; ARGV[1] the id, ARGV[2] the version the
-- writer read, ARGV[3] the new document. Returns 1 when written, 0 when the
-- stored version differs or the subscription is gone. Documents written
-- before versions existed count as version 0.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then
  return 0
end
local version = cjson.decode(current).version or 0
if version ~= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
