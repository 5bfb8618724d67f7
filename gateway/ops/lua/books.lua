-- reconcile's comparison of Redis's side (gateway/ops/reconcile.py), for the user state hashes
-- of one shard (one slot), in one call: each user's bal, ver and blks against PostgreSQL's
-- figures, returning only the users that may differ, so the cost of the users that agree stays
-- here. Reads only.
-- KEYS[i] user i's state hash
-- ARGV[1] '1' when nothing is left to flush (versions and blocks must then be equal), else '0'
-- ARGV[2] the users' PostgreSQL figures, a line each in KEYS' order (one argument, not one a
--   user: packing them is half of reconcile's Python): balance, version and open blocks
--   ('id:micro' joined by ',', '~' when it has none), joined by '|'
-- Returns, for each user Redis holds that is suspect, {i, bal, ver, blks} (false when a field
-- is absent), flattened: a negative balance; with ARGV[1] '1', a balance or version that
-- differs; blocks that do not sum to the balance; with ARGV[1] '1' and blocks in PostgreSQL,
-- blocks that differ in their ids or remainders. Python words the drift (_check, _check_blocks).
local settled = ARGV[1] == '1'
local figures = {}
for line in string.gmatch(ARGV[2], '[^\n]+') do figures[#figures + 1] = line end
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'bal', 'ver', 'blks')
  local bal, ver, blks = v[1], v[2], v[3]
  if bal then
    local pbal, pver, pblocks = string.match(figures[i], '^([^|]*)|([^|]*)|(.*)$')
    local odd = tonumber(bal) < 0 or (settled and (bal ~= pbal or (ver or '0') ~= pver))
    if not odd and blks then
      local sum, held, n = 0, {}, 0
      for entry in string.gmatch(blks, '[^,]+') do
        local rem, id = string.match(entry, '^(-?%d+):([^:]*)')
        sum = sum + tonumber(rem)
        held[id] = rem
        n = n + 1
      end
      odd = sum ~= tonumber(bal)
      if not odd and settled and pblocks ~= '~' then
        for entry in string.gmatch(pblocks, '[^,]+') do
          local id, rem = string.match(entry, '^(.*):(-?%d+)$')
          if held[id] ~= rem then odd = true break end
          n = n - 1
        end
        odd = odd or n ~= 0
      end
    end
    if odd then
      out[#out + 1] = i
      out[#out + 1] = bal
      out[#out + 1] = ver or false
      out[#out + 1] = blks or false
    end
  end
end
return out
