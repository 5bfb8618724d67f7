-- The renewal cron's call (gateway/credits/renewal.py): many idle users of one shard, each
-- loaded from its PostgreSQL row unless Redis holds it (hydrate.lua's rule: never overwrite a
-- newer state), then caught up as reset.lua does unforced: its period renewed if one has begun,
-- its due blocks expired, its expired holds returned. Safe to repeat: a renewal is keyed by
-- period and an expired block is removed by the call that expires it.
-- KEYS[1] the shard's event stream; KEYS[2i], KEYS[2i+1] user i's state hash and holds
-- ARGV[1] '' ARGV[2..3] the common header's clock offset and period (lib.lua)
-- ARGV[4] a transaction id (version 7 uuid, new for the call): user i's renewal id is it with
--   its last 8 hex digits replaced by i's (twin_id varies another digit, so none collide)
-- ARGV[5] the tiers' roll flags (tiers.py roll_flag) as a JSON object by tier name (a tier
--   not in it: '0', as roll_flag(None))
-- ARGV[5+i] user i's row (persistence/renewal_queries.py): bal, alloc, tier, cap ('' none),
--   reset (ISO), ver, spent, rst (epoch ms), blks ('' none), nexp, then the user id, joined by
--   the unit separator; pstart is rst's period, as CreditService.hydrate_args makes it
-- Returns {users renewed, users whose blocks expired, users loaded, users done}: the users
-- are taken in order while the shard's unflushed events leave room for a user's two (a
-- renewal, an expiry) under BACKLOG_MAX; the rest are left as they are, for the next call.
local n = #KEYS / 2
local rolls = cjson.decode(ARGV[5])
local base = string.sub(ARGV[4], 1, 28)
local renewed, expired, loaded = 0, 0, 0
local done = 0
for i = 1, n do
  if redis.call('XLEN', KEYS[1]) + 2 > BACKLOG_MAX then break end
  local key, row = KEYS[2 * i], ARGV[5 + i]
  local f, at = {}, 1
  for _ = 1, 10 do
    local stop = string.find(row, '\31', at, true)
    f[#f + 1] = string.sub(row, at, stop - 1)
    at = stop + 1
  end
  H.uid, H.rtxn = string.sub(row, at), base .. string.format('%08x', i)
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'bal', f[1], 'alloc', f[2], 'tier', f[3], 'cap', f[4], 'reset', f[5],
               'ver', f[6], 'pstart', int(period_of(tonumber(f[8]), ARGV[3])), 'spent', f[7],
               'roll', rolls[f[3]] or '0', 'rst', f[8])
    if f[9] ~= '' then redis.call('HSET', key, 'blks', f[9], 'nexp', f[10]) end
    loaded = loaded + 1
  end
  local r, lost = catch_up(key, KEYS[1])
  if r then renewed = renewed + 1 end
  if lost > 0 then expired = expired + 1 end
  purge_holds(key, KEYS[2 * i + 1])
  done = i
end
return {renewed, expired, loaded, done}
