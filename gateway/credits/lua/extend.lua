-- Extend a held reservation: it now expires no sooner than ttl from now (on the one clock,
-- lib.lua), for a call that outlives its first hold (a long stream). Never shortens a hold;
-- repeating it only moves the expiry to later, so it is idempotent by nature. A hold that
-- purge_holds already returned (expired) is not revived.
-- KEYS[1] the reservation hash  KEYS[2] user state hash  KEYS[3] the user's holds
-- ARGV[1..4] the common header (lib.lua)  ARGV[5] reservation id  ARGV[6] ttl (ms)
-- ARGV[7] how long the reservation record is kept after its expiry (s)
-- Returns {'ok', held, expiry (epoch ms)}, {'expired'}, {'committed'}, {'released'},
--         {'notfound'}.
local r = redis.call('HMGET', KEYS[1], 'st', 'amt', 'exp')
if not r[1] or redis.call('EXISTS', KEYS[2]) == 0 then return {'notfound'} end
if r[1] == 'committed' or r[1] == 'released' then return {r[1]} end
purge_holds(KEYS[2], KEYS[3])
local member = ARGV[5] .. '|' .. r[2]
if r[1] == 'expired' or not redis.call('ZSCORE', KEYS[3], member) then
  redis.call('HSET', KEYS[1], 'st', 'expired')
  return {'expired'}
end
local exp = math.max(tonumber(r[3]), H.now + tonumber(ARGV[6]))
redis.call('ZADD', KEYS[3], 'XX', exp, member)
redis.call('HSET', KEYS[1], 'exp', int(exp))
-- relative to the one clock's now, so the record's TTL is real time, whatever the offset
redis.call('PEXPIRE', KEYS[1], exp - H.now + tonumber(ARGV[7]) * 1000)
return {'ok', r[2], int(exp)}
