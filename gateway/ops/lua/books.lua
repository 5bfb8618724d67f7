-- reconcile's comparison of Redis's side (gateway/ops/reconcile.py), for the user state hashes
-- of one shard (one slot), in one call: each user's bal, ver and blks against PostgreSQL's
-- figures, returning only the users that may differ, so the cost of the users that agree stays
-- here. Reads only.
-- KEYS[i] user i's state hash
-- ARGV[1] '1' when nothing is left to flush (versions and blocks must then be equal), else '0'
-- ARGV[2] the users' PostgreSQL figures, a line each in KEYS' order (one argument, not one a
--   user: packing them is half of reconcile's Python): balance, version and open blocks
--   ('id:micro' joined by ',', '~' when it has none), joined by '|'
-- Returns how many of the users Redis holds, then, for each of them that is suspect,
-- {i, bal, ver, blks} (false when a field is absent), flattened: a negative balance; with
-- ARGV[1] '1', a balance or version that
-- differs; blocks that do not sum to the balance; with ARGV[1] '1' and blocks in PostgreSQL,
-- blocks that differ in their ids or remainders. Python words the drift (_check, _check_blocks).
local settled = ARGV[1] == '1'
-- a million users a run: the library's functions as locals, and a user holding one block (most
-- do) compared without building a table
local call, match, gmatch, find, tonumber = redis.call, string.match, string.gmatch, string.find,
  tonumber
local figures, nf = {}, 0
for line in gmatch(ARGV[2], '[^\n]+') do
  nf = nf + 1
  figures[nf] = line
end
local out, no, held = {0}, 1, 0
for i = 1, #KEYS do
  local v = call('HMGET', KEYS[i], 'bal', 'ver', 'blks')
  local bal, ver, blks = v[1], v[2], v[3]
  if bal then
    held = held + 1
    local pbal, pver, pblocks = match(figures[i], '^([^|]*)|([^|]*)|(.*)$')
    local odd = tonumber(bal) < 0 or (settled and (bal ~= pbal or (ver or '0') ~= pver))
    if not odd and blks and not find(blks, ',', 1, true) then
      local rem, id = match(blks, '^(-?%d+):([^:]*)')
      odd = tonumber(rem) ~= tonumber(bal)
      if not odd and settled and pblocks ~= '~' then
        odd = pblocks ~= id .. ':' .. rem  -- PostgreSQL's listing is that one block
      end
    elseif not odd and blks then
      local sum, held, n = 0, {}, 0
      for entry in gmatch(blks, '[^,]+') do
        local rem, id = match(entry, '^(-?%d+):([^:]*)')
        sum = sum + tonumber(rem)
        held[id] = rem
        n = n + 1
      end
      odd = sum ~= tonumber(bal)
      if not odd and settled and pblocks ~= '~' then
        for entry in gmatch(pblocks, '[^,]+') do
          local id, rem = match(entry, '^(.*):(-?%d+)$')
          if held[id] ~= rem then odd = true break end
          n = n - 1
        end
        odd = odd or n ~= 0
      end
    end
    if odd then
      out[no + 1] = i
      out[no + 2] = bal
      out[no + 3] = ver or false
      out[no + 4] = blks or false
      no = no + 4
    end
  end
end
out[1] = held
return out
