-- Read a user's state, renewing the period first if a new one has begun.
-- KEYS[1] user state hash  KEYS[2] shard event stream  KEYS[3] the user's holds
-- ARGV[1..4] the common header (lib.lua)
-- Returns {'miss'} or {'ok', bal, alloc, tier, cap, reset, spent, held}.
if redis.call('EXISTS', KEYS[1]) == 0 then return miss() end
auto_renew(KEYS[1], KEYS[2])
local held = purge_holds(KEYS[1], KEYS[3])
local st = redis.call('HMGET', KEYS[1], 'bal', 'alloc', 'tier', 'cap', 'reset', 'spent')
return {'ok', st[1], st[2], st[3], st[4], st[5], st[6], int(held)}
