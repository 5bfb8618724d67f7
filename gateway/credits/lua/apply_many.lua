-- Apply many debits (or grants) of users of one shard, in order, in one call: apply_change in
-- lib.lua for each item, exactly as apply.lua would run it alone.
-- KEYS[1] the shard's event stream; then per item: user state hash, idempotency bucket, holds.
-- ARGV[1] '' ARGV[2..3] the common header's clock offset and period (lib.lua) ARGV[4] ''
-- ARGV[5] idempotency ttl (s)  ARGV[6] event type
-- ARGV[7] the items, a JSON array of [user id, renewal transaction id, delta (micro, signed;
-- or by tier: lib.lua for_tier),
-- transaction id, request id, [extra event fields, name/value pairs]], all
-- strings (one argument for all items: packing thousands of arguments costs the client more
-- than the script's decoding of one)
-- ARGV[8] the items' idempotency records (lib.lua), 28 bytes each, one after the other (binary,
-- which JSON cannot carry).
-- Returns one answer per item, as apply.lua's.
local ttl, event = tonumber(ARGV[5]), ARGV[6]
local out = {}
for i, item in ipairs(cjson.decode(ARGV[7])) do
  H.uid, H.rtxn = item[1], item[2]
  local k = 3 * i - 1
  out[i] = apply_change(KEYS[k], KEYS[k + 1], KEYS[1], KEYS[k + 2], item[3],
                        string.sub(ARGV[8], 28 * i - 27, 28 * i), item[4], ttl, item[5], event,
                        item[6])
end
return out
