-- Apply one signed credit change (debit < 0, grant > 0) atomically: apply_change in lib.lua.
-- KEYS[1] user state hash   KEYS[2] idempotency record   KEYS[3] shard event stream
-- KEYS[4] the user's holds (reservations); held credits cannot be spent
-- ARGV[1..5] the common header (lib.lua)  ARGV[6] delta (micro, signed)  ARGV[7] body fingerprint
-- ARGV[8] transaction id  ARGV[9] idempotency ttl (s)  ARGV[10] request id  ARGV[11] event type
-- ARGV[12..] extra event fields, name/value pairs
local extra = {}
for i = 12, #ARGV do extra[#extra + 1] = ARGV[i] end
return apply_change(KEYS[1], KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[6]), ARGV[7], ARGV[8],
                    tonumber(ARGV[9]), ARGV[10], ARGV[11], extra)
