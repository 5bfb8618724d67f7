-- Read a user's state, renewing the period and expiring due blocks first.
-- KEYS[1] user state hash  KEYS[2] shard event stream  KEYS[3] the user's holds
-- ARGV[1..4] the common header (lib.lua)
-- Returns {'miss'} or {'ok', bal, alloc, tier, cap, reset, spent, held, nexp, due, arem, roll}:
-- nexp the next expiry of a block (epoch ms, 0: none), due what expires then (micro), arem what
-- is left of the allocation block (it ends with the period unless roll is '1').
if redis.call('EXISTS', KEYS[1]) == 0 then return miss() end
catch_up(KEYS[1], KEYS[2])
local held = purge_holds(KEYS[1], KEYS[3])
local st = redis.call('HMGET', KEYS[1], 'bal', 'alloc', 'tier', 'cap', 'reset', 'spent', 'blks',
                      'nexp', 'roll')
local nexp, due, arem = tonumber(st[8] or '0'), 0, 0
for _, b in ipairs(parse_blocks(st[7])) do
  if nexp > 0 and b.exp == nexp then due = due + b.rem end
  if b.kind == 'allocation' then arem = arem + b.rem end
end
if not st[7] then arem = math.min(tonumber(st[1]), tonumber(st[2])) end
return {'ok', st[1], st[2], st[3], st[4], st[5], st[6], int(held), int(nexp), int(due), int(arem),
        st[9] or '0'}
