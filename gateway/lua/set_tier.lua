-- Move a user to a tier: allocation, cap and rollover change, the balance moves by the
-- allocation's difference (never below 0, never past MAX), recorded as an 'allocation' event.
-- KEYS[1] user state hash  KEYS[2] shard event stream  KEYS[3] the user's holds
-- ARGV[1..5] the common header (lib.lua)  ARGV[6] tier  ARGV[7] allocation (micro)
-- ARGV[8] cap (micro or '')  ARGV[9] roll ('1' or '0')  ARGV[10] transaction id  ARGV[11] request id
-- ARGV[12] the acting key's name (for the audit log)
-- Balances returned are available credits (less holds).
-- {'backlog'} when the shard's unflushed events reached BACKLOG_MAX (nothing changed).
-- Returns {'ok', txn, delta, balance}, {'same', '', '0', balance}, {'overflow', balance}, {'miss'}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'miss'} end
if redis.call('XLEN', KEYS[2]) >= BACKLOG_MAX then return {'backlog'} end
auto_renew(KEYS[1], KEYS[2])
local held = purge_holds(KEYS[1], KEYS[3])
local s = redis.call('HMGET', KEYS[1], 'bal', 'alloc', 'tier', 'cap', 'roll', 'spent')
if s[3] == ARGV[6] and s[2] == ARGV[7] and s[4] == ARGV[8] and s[5] == ARGV[9] then
  return {'same', '', '0', int(tonumber(s[1]) - held)}
end
local bal = tonumber(s[1])
local delta = tonumber(ARGV[7]) - tonumber(s[2])
local after = bal + delta
if after > MAX then return {'overflow', avail(bal, held)} end
if after < 0 then
  after = 0
  delta = -bal
end
redis.call('HSET', KEYS[1], 'bal', int(after), 'alloc', ARGV[7], 'tier', ARGV[6], 'cap', ARGV[8],
           'roll', ARGV[9])
local ver = redis.call('HINCRBY', KEYS[1], 'ver', 1)
emit(KEYS[2], 'allocation', ARGV[10], ARGV[11], delta, after, ver, tonumber(s[6]),
     {'tier', ARGV[6], 'alloc', ARGV[7], 'cap', ARGV[8], 'actor', ARGV[12]})
return {'ok', ARGV[10], int(delta), avail(after, held)}
