-- Apply one signed credit change (debit < 0, grant > 0) atomically, at most once per request id:
-- idempotency check, period renewal, cap and balance checks, update, ledger event.
-- KEYS[1] user state hash   KEYS[2] idempotency record   KEYS[3] shard event stream
-- KEYS[4] the user's holds (reservations); held credits cannot be spent
-- ARGV[1..5] the common header (lib.lua)  ARGV[6] delta (micro, signed)  ARGV[7] body fingerprint
-- ARGV[8] transaction id  ARGV[9] idempotency ttl (s)  ARGV[10] request id  ARGV[11] event type
-- ARGV[12..] extra event fields, name/value pairs
-- Balances returned are what the user can spend: the balance less its holds.
-- {'backlog'} when the shard's unflushed events reached BACKLOG_MAX (nothing changed).
-- Returns {'ok'|'replay', txn, delta, available}, {'conflict'}, {'nsf', available},
--         {'cap', available, spent, cap}, {'overflow', available} or {'miss'} (hydrate first).
local stop, held = open_user(KEYS[1], KEYS[2], ARGV[7], KEYS[3], KEYS[4])
if stop then return stop end
local st = redis.call('HMGET', KEYS[1], 'bal', 'spent', 'cap')
local bal, spent = tonumber(st[1]), tonumber(st[2])
local delta = tonumber(ARGV[6])
if delta < 0 then
  local refused = refuse_spend(bal, spent, held, st[3], -delta)
  if refused then return refused end
end
local after = bal + delta
if after > MAX then return {'overflow', avail(bal, held)} end
if delta < 0 then spent = spent - delta end
redis.call('HSET', KEYS[1], 'bal', int(after), 'spent', int(spent))
local ver = redis.call('HINCRBY', KEYS[1], 'ver', 1)
local extra = {}
for i = 12, #ARGV do extra[#extra + 1] = ARGV[i] end
emit(KEYS[3], ARGV[11], ARGV[8], ARGV[10], delta, after, ver, spent, extra)
idem_save(KEYS[2], ARGV[7], ARGV[8], delta, avail(after, held), tonumber(ARGV[9]))
return {'ok', ARGV[8], int(delta), avail(after, held)}
