-- Hold credits for a call whose cost is known only at its end (two-phase: reserve, then commit
-- or release). Held credits cannot be spent elsewhere; a hold neither committed nor released
-- stops counting at its expiry (purge_holds), so it can never leak. The expiry is judged on the
-- one clock (lib.lua); the reservation record is kept for a relative time after it.
-- KEYS[1] user state hash  KEYS[2] idempotency bucket  KEYS[3] the user's holds
-- KEYS[4] the reservation hash  KEYS[5] shard event stream
-- ARGV[1..4] the common header (lib.lua)  ARGV[5] amount (micro)  ARGV[6] idempotency record (lib.lua)
-- ARGV[7] reservation id  ARGV[8] idempotency ttl (s)  ARGV[9] the hold's time to live (ms)
-- ARGV[10] request id  ARGV[11] how long the reservation record is kept after its expiry (s)
-- {'backlog'} when the shard's unflushed events reached BACKLOG_MAX (nothing changed).
-- Returns {'ok'|'replay', reservation id, amount, available, expiry (epoch ms)}, {'conflict'},
--         {'nsf', available}, {'cap', available, spent, cap} or {'miss', now}.
local stop, held, st = open_user(KEYS[1], KEYS[2], ARGV[6], tonumber(ARGV[8]), KEYS[5],
                                 KEYS[3])
if stop then return stop end
local bal, spent = tonumber(st[3]), tonumber(st[4])
local amount = tonumber(ARGV[5])
local refused = refuse_spend(bal, spent, held, st[5], amount)
if refused then return refused end
held = held + amount
local ttl = tonumber(ARGV[9])
local exp = int(H.now + ttl)
redis.call('HSET', KEYS[1], 'held', int(held))
redis.call('ZADD', KEYS[3], exp, ARGV[7] .. '|' .. ARGV[5])
redis.call('HSET', KEYS[4], 'u', ARGV[1], 'amt', ARGV[5], 'exp', exp, 'st', 'held',
           'rid', ARGV[10])
redis.call('PEXPIRE', KEYS[4], ttl + tonumber(ARGV[11]) * 1000)
idem_save(KEYS[2], ARGV[6], ARGV[7], amount, avail(bal, held), tonumber(ARGV[8]))
return {'ok', ARGV[7], int(amount), avail(bal, held), exp}
