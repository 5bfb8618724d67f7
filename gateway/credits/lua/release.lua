-- Release a reservation: its hold stops counting at once. Idempotent. The hold's presence in the
-- user's holds is the truth: one that purge_holds already returned (expired on the one clock,
-- lib.lua) is answered 'expired' and returned nothing more.
-- KEYS[1] the reservation hash  KEYS[2] user state hash  KEYS[3] the user's holds
-- ARGV[1..4] the common header (lib.lua)  ARGV[5] reservation id
-- Returns {'ok'|'replay', amount, available}, {'expired', amount, available}, {'committed'},
--         {'notfound'}.
local r = redis.call('HMGET', KEYS[1], 'st', 'amt')
if not r[1] or redis.call('EXISTS', KEYS[2]) == 0 then return {'notfound'} end
if r[1] == 'committed' then return {'committed'} end
local held = purge_holds(KEYS[2], KEYS[3])
local bal = tonumber(redis.call('HGET', KEYS[2], 'bal'))
if r[1] == 'released' then return {'replay', r[2], avail(bal, held)} end
if r[1] == 'expired' or redis.call('ZREM', KEYS[3], ARGV[5] .. '|' .. r[2]) == 0 then
  redis.call('HSET', KEYS[1], 'st', 'expired')
  return {'expired', r[2], avail(bal, held)}
end
held = held - tonumber(r[2])
redis.call('HSET', KEYS[2], 'held', int(held))
redis.call('HSET', KEYS[1], 'st', 'released')
return {'ok', r[2], avail(bal, held)}
