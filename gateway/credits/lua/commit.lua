-- Settle a reservation with the actual cost: charge it (a 'usage' event under the reservation's
-- request id) and return the rest of the hold. Idempotent: the same amount again replays.
-- The hold's presence in the user's holds is the truth: a hold that purge_holds has returned
-- (expired on the one clock, lib.lua) is never charged or returned again.
-- KEYS[1] the reservation hash  KEYS[2] user state hash  KEYS[3] the user's holds
-- KEYS[4] shard event stream
-- ARGV[1..4] the common header (lib.lua)  ARGV[5] amount to charge (micro; or by tier: for_tier)
-- ARGV[6] transaction id  ARGV[7] reservation id  ARGV[8..] extra event fields, name/value pairs
-- {'backlog'} when the shard's unflushed events reached BACKLOG_MAX (nothing changed).
-- Returns {'ok'|'replay', txn, charged, available, held}, {'conflict', charged},
--         {'released'}, {'expired'}, {'notfound'}, {'nsf', available} or {'cap', available,
--         spent, cap} (the cap only when charging more than was held: a hold is a promise made
--         under the cap of its time).
local r = redis.call('HMGET', KEYS[1], 'st', 'amt', 'exp', 'tx', 'charged', 'bal', 'rid')
if not r[1] or redis.call('EXISTS', KEYS[2]) == 0 then return {'notfound'} end
if r[1] == 'committed' then
  if any_amount(ARGV[5], r[5]) then return {'replay', r[4], r[5], r[6], r[2]} end
  return {'conflict', r[5]}
end
if r[1] == 'released' then return {'released'} end
if redis.call('XLEN', KEYS[4]) >= BACKLOG_MAX then return {'backlog'} end
catch_up(KEYS[2], KEYS[4])
local held = purge_holds(KEYS[2], KEYS[3])
local member = ARGV[7] .. '|' .. r[2]
if r[1] == 'expired' or not redis.call('ZSCORE', KEYS[3], member) then
  redis.call('HSET', KEYS[1], 'st', 'expired')
  return {'expired'}
end
local hold = tonumber(r[2])
local charge = for_tier(KEYS[2], ARGV[5])
local st = redis.call('HMGET', KEYS[2], 'bal', 'spent', 'cap', 'blks')
local bal, spent = tonumber(st[1]), tonumber(st[2])
local others = held - hold
if charge > hold and st[3] ~= '' and spent + others + charge > tonumber(st[3]) then
  return {'cap', avail(bal, held), int(spent + held), st[3]}
end
-- always checked: a renewal or a tier change may have lowered the balance under the holds
if bal - others - charge < 0 then return {'nsf', avail(bal, held)} end
local blks, draws, listed = draw(blocks_or_legacy(KEYS[2], st[4], bal), charge)
if not blks then return redis.error_reply('credit blocks hold less than the balance') end
listed = '+' .. listed  -- only what changed (the flusher reads '+' as a patch)
if not st[4] then listed = blks end  -- blocks just made from the balance: all of them
redis.call('ZREM', KEYS[3], member)
bal = bal - charge
spent = add_spent(spent, charge)
redis.call('HSET', KEYS[2], 'bal', int(bal), 'spent', int(spent), 'held', int(others),
           'blks', blks)
local ver = redis.call('HINCRBY', KEYS[2], 'ver', 1)
local extra = {'resv', ARGV[7], 'blk', listed, 'draws', table.concat(draws, ',')}
for i = 8, #ARGV do extra[#extra + 1] = ARGV[i] end
emit(KEYS[4], 'usage', ARGV[6], r[7], -charge, bal, ver, spent, extra)
redis.call('HSET', KEYS[1], 'st', 'committed', 'tx', ARGV[6], 'charged', int(charge),
           'bal', avail(bal, others))
return {'ok', ARGV[6], int(charge), avail(bal, others), r[2]}
