-- Apply one signed credit change (debit < 0, grant > 0) atomically, at most once per request id.
-- KEYS[1] user state hash   KEYS[2] idempotency record   KEYS[3] shard event stream
-- ARGV[1] user_id  ARGV[2] delta (micro-credits, signed)  ARGV[3] body fingerprint
-- ARGV[4] transaction id  ARGV[5] now (ms)  ARGV[6] idempotency ttl (s)  ARGV[7] request id
-- ARGV[8] event type  ARGV[9] max balance (micro)  ARGV[10..] extra event fields, name/value pairs
-- Returns {'ok', txn, delta, balance}, {'replay', txn, delta, balance}, {'conflict'},
--         {'nsf', balance}, {'overflow', balance} or {'miss'} (user not in Redis: hydrate first).
local seen = redis.call('GET', KEYS[2])
if seen then
  local fp, txn, delta, bal = string.match(seen, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  if fp ~= ARGV[3] then return {'conflict'} end
  return {'replay', txn, delta, bal}
end
local bal = redis.call('HGET', KEYS[1], 'bal')
if not bal then return {'miss'} end
bal = tonumber(bal)
local delta = tonumber(ARGV[2])
local after = bal + delta
if after < 0 then return {'nsf', tostring(bal)} end
if after > tonumber(ARGV[9]) then return {'overflow', tostring(bal)} end
redis.call('HSET', KEYS[1], 'bal', string.format('%d', after))
local ver = redis.call('HINCRBY', KEYS[1], 'ver', 1)
local after_s = string.format('%d', after)
local delta_s = string.format('%d', delta)
local ev = {'t', ARGV[8], 'u', ARGV[1], 'tx', ARGV[4], 'rid', ARGV[7], 'amt', delta_s,
            'bal', after_s, 'ver', tostring(ver), 'ts', ARGV[5]}
for i = 10, #ARGV, 2 do
  ev[#ev + 1] = ARGV[i]
  ev[#ev + 1] = ARGV[i + 1]
end
redis.call('XADD', KEYS[3], '*', unpack(ev))
redis.call('SET', KEYS[2], ARGV[3] .. '|' .. ARGV[4] .. '|' .. delta_s .. '|' .. after_s,
           'EX', tonumber(ARGV[6]))
return {'ok', ARGV[4], delta_s, after_s}
