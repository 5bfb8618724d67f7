-- reconcile's count of the user state hashes Redis holds (gateway/ops/reconcile.py), a SCAN
-- step at a time, by shard, so that the keys themselves never leave Redis. Reads only.
-- No KEYS (the keyspace is walked); on a Redis Cluster it runs on every primary.
-- ARGV[1] the SCAN cursor  ARGV[2] the key prefix  ARGV[3] keys to walk (SCAN's COUNT)
-- Returns {next cursor, shard, n, shard, n, ...}: the user state hashes this step found, by
-- shard (a key is one when it is exactly 'prefix:{s<shard>}:u:<user>', the user without ':',
-- as Keys.user_id_of reads it back).
local head = string.gsub(ARGV[2], '%p', '%%%0')
local pattern = '^' .. head .. ':{s(%d+)}:u:[^:]*$'
local step = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2] .. ':{s*}:u:*', 'COUNT', ARGV[3],
                        'TYPE', 'hash')
local counts, match = {}, string.match
for _, key in ipairs(step[2]) do
  local shard = match(key, pattern)
  if shard then counts[shard] = (counts[shard] or 0) + 1 end
end
local out = {step[1]}
for shard, n in pairs(counts) do
  out[#out + 1] = shard
  out[#out + 1] = n
end
return out
