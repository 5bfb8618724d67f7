-- Renew a user's period: when a new one has begun (idle users, from the scheduled job), or at
-- once when forced by an admin (idempotent by request id); expire its blocks whose time has come.
-- KEYS[1] user state hash  KEYS[2] idempotency bucket  KEYS[3] shard event stream
-- KEYS[4] the user's holds (balances returned are available credits, less holds)
-- ARGV[1..4] the common header (lib.lua)  ARGV[5] force ('1' or '0')  ARGV[6] request id
-- ARGV[7] idempotency record (lib.lua)  ARGV[8] idempotency ttl (s)  ARGV[9] transaction id (forced)
-- ARGV[10] the acting key's name (for the audit log)
-- A forced renewal is dated by the one clock (lib.lua) and never moves the period back.
-- {'backlog'} when the shard's unflushed events reached BACKLOG_MAX (nothing changed).
-- Returns {'ok'|'replay', txn, delta, balance}, {'same', '', '0', balance}, {'conflict'},
--         {'miss', now}; unforced, a fifth value: the credits expired (micro).
local force = ARGV[5] == '1'
if force then
  local seen = idem_check(KEYS[2], ARGV[7], tonumber(ARGV[8]))
  if seen then return seen end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return miss() end
local before = tonumber(redis.call('HGET', KEYS[1], 'bal'))
if redis.call('XLEN', KEYS[3]) >= BACKLOG_MAX then return {'backlog'} end
local renewed, expired = catch_up(KEYS[1], KEYS[3])
if force then
  renew(KEYS[1], KEYS[3], true, ARGV[6], ARGV[9], {'actor', ARGV[10]})
end
local after = tonumber(redis.call('HGET', KEYS[1], 'bal'))
local held = purge_holds(KEYS[1], KEYS[4])
if force then
  idem_save(KEYS[2], ARGV[7], ARGV[9], after - before, avail(after, held), tonumber(ARGV[8]))
  return {'ok', ARGV[9], int(after - before), avail(after, held)}
end
if renewed then return {'ok', H.rtxn, int(after - before), avail(after, held), int(expired)} end
return {'same', '', '0', avail(after, held), int(expired)}
