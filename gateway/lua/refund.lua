-- Return all or part of a debit, never more than was charged across all its refunds.
-- KEYS[1] user state hash  KEYS[2] idempotency record  KEYS[3] shard event stream
-- KEYS[4] the user's holds  KEYS[5] the debit's refund tracker (micro refunded so far)
-- ARGV[1..5] the common header (lib.lua)  ARGV[6] amount (micro; 0 = all that is left)
-- ARGV[7] body fingerprint  ARGV[8] transaction id  ARGV[9] idempotency ttl (s)
-- ARGV[10] request id  ARGV[11] micro charged by the debit  ARGV[12] micro of its refunds
-- already in PostgreSQL  ARGV[13] debit transaction id  ARGV[14] '1' when the debit is in the
-- current period (its refund lowers the period's spending)  ARGV[15] the acting key's name
-- {'backlog'} when the shard's unflushed events reached BACKLOG_MAX (nothing changed).
-- Returns {'ok'|'replay', txn, amount, available}, {'conflict'}, {'exhausted'},
--         {'exceeds', refundable}, {'overflow', available} or {'miss'}.
local stop, held, st = open_user(KEYS[1], KEYS[2], ARGV[7], KEYS[3], KEYS[4])
if stop then return stop end
local done = tonumber(redis.call('GET', KEYS[5]) or ARGV[12])
local left = tonumber(ARGV[11]) - done
if left <= 0 then return {'exhausted'} end
local amount = tonumber(ARGV[6])
if amount == 0 then amount = left end
if amount > left then return {'exceeds', int(left)} end
local bal, spent = tonumber(st[3]), tonumber(st[4])
if bal + amount > MAX then return {'overflow', avail(bal, held)} end
bal = bal + amount
if ARGV[14] == '1' then spent = math.max(spent - amount, 0) end
local ver = int(tonumber(st[6]) + 1)
redis.call('HSET', KEYS[1], 'bal', int(bal), 'spent', int(spent), 'ver', ver)
redis.call('SET', KEYS[5], int(done + amount), 'EX', tonumber(ARGV[9]))
emit(KEYS[3], 'refund', ARGV[8], ARGV[10], amount, bal, ver, spent,
     {'ref', ARGV[13], 'actor', ARGV[15]})
idem_save(KEYS[2], ARGV[7], ARGV[8], amount, avail(bal, held), tonumber(ARGV[9]))
return {'ok', ARGV[8], int(amount), avail(bal, held)}
