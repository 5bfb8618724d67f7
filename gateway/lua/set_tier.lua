-- Move a user to a tier: allocation and cap change, the balance moves by the allocation's
-- difference (never below 0, never past the maximum), recorded as an 'allocation' event.
-- KEYS[1] user state hash  KEYS[2] shard event stream
-- ARGV[1] user_id  ARGV[2] tier  ARGV[3] allocation (micro)  ARGV[4] cap (micro or '')
-- ARGV[5] transaction id  ARGV[6] now (ms)  ARGV[7] request id  ARGV[8] max balance (micro)
-- Returns {'ok', txn, delta, balance}, {'same', '', '0', balance}, {'overflow', balance}, {'miss'}.
local s = redis.call('HMGET', KEYS[1], 'bal', 'alloc', 'tier', 'cap')
if not s[1] then return {'miss'} end
local bal = tonumber(s[1])
if s[3] == ARGV[2] and s[2] == ARGV[3] and s[4] == ARGV[4] then
  return {'same', '', '0', s[1]}
end
local delta = tonumber(ARGV[3]) - tonumber(s[2])
local after = bal + delta
if after > tonumber(ARGV[8]) then return {'overflow', s[1]} end
if after < 0 then
  after = 0
  delta = -bal
end
local after_s = string.format('%d', after)
local delta_s = string.format('%d', delta)
redis.call('HSET', KEYS[1], 'bal', after_s, 'alloc', ARGV[3], 'tier', ARGV[2], 'cap', ARGV[4])
local ver = redis.call('HINCRBY', KEYS[1], 'ver', 1)
redis.call('XADD', KEYS[2], '*', 't', 'allocation', 'u', ARGV[1], 'tx', ARGV[5], 'rid', ARGV[7],
           'amt', delta_s, 'bal', after_s, 'ver', tostring(ver), 'ts', ARGV[6],
           'tier', ARGV[2], 'alloc', ARGV[3], 'cap', ARGV[4])
return {'ok', ARGV[5], delta_s, after_s}
