-- A request's idempotency record, for a caller that checks a request id outside the script
-- that made it (coupons), or forgets it (tests and drills: Redis losing it).
-- KEYS[1] idempotency bucket  ARGV[1..4] the common header (lib.lua)  ARGV[5] the request's
-- record (lib.lua)  ARGV[6] idempotency ttl (s)  ARGV[7] '1': forget it
-- Returns the stored fingerprint (8 hex digits: the start of the body's) or false (none).
local seen, key = idem_find(KEYS[1], ARGV[5], tonumber(ARGV[6]))
if not seen then return false end
if ARGV[7] == '1' then redis.call('HDEL', key, string.sub(ARGV[5], 1, 7)) end
return hex(string.sub(seen, 1, 4))
