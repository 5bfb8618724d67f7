-- reconcile's read of Redis's side: for each user state hash in KEYS (one shard: one slot),
-- its bal, ver and blks, three values a key (false when absent), in one call instead of one
-- HMGET a user. Reads only.
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'bal', 'ver', 'blks')
  out[3 * i - 2], out[3 * i - 1], out[3 * i] = v[1], v[2], v[3]
end
return out
