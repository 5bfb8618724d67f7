-- Hold credits for a call whose cost is known only at its end (two-phase: reserve, then commit
-- or release). Held credits cannot be spent elsewhere; a hold neither committed nor released
-- stops counting at its expiry (purge_holds), so it can never leak.
-- KEYS[1] user state hash  KEYS[2] idempotency record  KEYS[3] the user's holds
-- KEYS[4] the reservation hash  KEYS[5] shard event stream
-- ARGV[1..5] the common header (lib.lua)  ARGV[6] amount (micro)  ARGV[7] body fingerprint
-- ARGV[8] reservation id  ARGV[9] idempotency ttl (s)  ARGV[10] expiry (ms)  ARGV[11] request id
-- ARGV[12] how long the reservation record is kept (s)
-- {'backlog'} when the shard's unflushed events reached BACKLOG_MAX (nothing changed).
-- Returns {'ok'|'replay', reservation id, amount, available}, {'conflict'}, {'nsf', available},
--         {'cap', available, spent, cap} or {'miss'}.
local stop, held, st = open_user(KEYS[1], KEYS[2], ARGV[7], KEYS[5], KEYS[3])
if stop then return stop end
local bal, spent = tonumber(st[3]), tonumber(st[4])
local amount = tonumber(ARGV[6])
local refused = refuse_spend(bal, spent, held, st[5], amount)
if refused then return refused end
held = held + amount
redis.call('HSET', KEYS[1], 'held', int(held))
redis.call('ZADD', KEYS[3], ARGV[10], ARGV[8] .. '|' .. ARGV[6])
redis.call('HSET', KEYS[4], 'u', ARGV[1], 'amt', ARGV[6], 'exp', ARGV[10], 'st', 'held',
           'rid', ARGV[11])
redis.call('PEXPIREAT', KEYS[4], tonumber(ARGV[10]) + tonumber(ARGV[12]) * 1000)
idem_save(KEYS[2], ARGV[7], ARGV[8], amount, avail(bal, held), tonumber(ARGV[9]))
return {'ok', ARGV[8], int(amount), avail(bal, held)}
