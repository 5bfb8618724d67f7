-- Load a user's state into Redis unless it is already there (never overwrite a newer state).
-- KEYS[1] user state hash
-- ARGV: bal, alloc, tier, cap ('' = none), reset (ISO), ver (last version flushed to Postgres),
--       pstart (epoch s of the period of reset), spent (micro, this period), roll ('1' or '0'),
--       rst (the last renewal, epoch ms: the time of reset), blks (the open credit blocks as
--       lib.lua keeps them, in spending order; without it the first script to change the user
--       makes its blocks from its balance: lib.lua blocks_or_legacy), nexp (their earliest
--       expiry, epoch ms, 0: none)
-- Returns 1 when hydrated, 0 when the user was already present.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'bal', ARGV[1], 'alloc', ARGV[2], 'tier', ARGV[3], 'cap', ARGV[4],
           'reset', ARGV[5], 'ver', ARGV[6], 'pstart', ARGV[7], 'spent', ARGV[8], 'roll', ARGV[9],
           'rst', ARGV[10])
if ARGV[11] then redis.call('HSET', KEYS[1], 'blks', ARGV[11], 'nexp', ARGV[12] or '0') end
return 1
