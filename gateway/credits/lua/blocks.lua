-- A user's open credit blocks, after renewing the period and expiring due blocks.
-- KEYS[1] user state hash  KEYS[2] shard event stream  KEYS[3] the user's holds
-- ARGV[1..4] the common header (lib.lua)
-- Returns {'miss', now} or {'ok', blks (lib.lua's text, in spending order), reset (the period's
-- start, ISO)}. A user loaded before blocks gets the blocks its first change
-- will make (blocks_or_legacy), not stored.
if redis.call('EXISTS', KEYS[1]) == 0 then return miss() end
catch_up(KEYS[1], KEYS[2])
local st = redis.call('HMGET', KEYS[1], 'bal', 'blks', 'reset')
return {'ok', blocks_or_legacy(KEYS[1], st[2], tonumber(st[1])), st[3]}
