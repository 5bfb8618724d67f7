-- Apply many debits (or grants) of users of one shard, in order, in one call: apply_change in
-- lib.lua for each item, exactly as apply.lua would run it alone.
-- KEYS[1] the shard's event stream; then per item: user state hash, idempotency record, holds.
-- ARGV[1] '' ARGV[2..3] the common header's clock offset and period (lib.lua) ARGV[4] ''
-- ARGV[5] idempotency ttl (s)  ARGV[6] event type
-- ARGV[7] the items, a JSON array of [user id, renewal transaction id, delta (micro, signed;
-- or by tier: lib.lua for_tier),
-- body fingerprint, transaction id, request id, [extra event fields, name/value pairs]], all
-- strings (one argument for all items: packing thousands of arguments costs the client more
-- than the script's decoding of one).
-- Returns one answer per item, as apply.lua's.
local ttl, event = tonumber(ARGV[5]), ARGV[6]
local out = {}
for i, item in ipairs(cjson.decode(ARGV[7])) do
  H.uid, H.rtxn = item[1], item[2]
  local k = 3 * i - 1
  out[i] = apply_change(KEYS[k], KEYS[k + 1], KEYS[1], KEYS[k + 2], item[3], item[4],
                        item[5], ttl, item[6], event, item[7])
end
return out
