-- Apply one signed credit change (debit < 0, grant > 0) atomically: apply_change in lib.lua.
-- KEYS[1] user state hash   KEYS[2] idempotency bucket   KEYS[3] shard event stream
-- KEYS[4] the user's holds (reservations); held credits cannot be spent
-- ARGV[1..4] the common header (lib.lua)  ARGV[5] delta (micro, signed; or by tier: for_tier)
-- ARGV[6] the request's idempotency record (lib.lua)
-- ARGV[7] transaction id  ARGV[8] idempotency ttl (s)  ARGV[9] request id  ARGV[10] event type
-- ARGV[11] a grant's block: 'priority:expires_ms' ('' parts: the kind's priority, never)
-- ARGV[12..] extra event fields, name/value pairs
local extra = {}
for i = 12, #ARGV do extra[#extra + 1] = ARGV[i] end
return apply_change(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[5], ARGV[6], ARGV[7],
                    tonumber(ARGV[8]), ARGV[9], ARGV[10], extra, ARGV[11])
