-- Credit blocks (docs/credit-blocks.md), the first piece: how blocks are stored and spent.
-- Not part of any operation yet (gateway/credits/scripts.py blocks_source); the next step of
-- the build wires them into the scripts.
-- A block is a field 'g:ID' of the user hash (so it shares the user's slot and needs no key of
-- its own), valued 'kind|priority|expires_ms|created_ms|remaining'; expires_ms 0 is never.
local BLOCK_PRIORITY = {allocation = 10, rollover = 15, bonus = 20, adjustment = 25,
                        purchase = 30}
local MAX_BLOCKS = 100

local function block_value(b)
  return b.kind .. '|' .. int(b.prio) .. '|' .. int(b.exp) .. '|' .. int(b.created) .. '|' ..
         int(b.rem)
end

-- Spending order: priority ascending, then the earliest expiry (none last), the oldest, the id.
local function spends_before(a, b)
  if a.prio ~= b.prio then return a.prio < b.prio end
  local ea, eb = a.exp, b.exp
  if ea == 0 then ea = math.huge end
  if eb == 0 then eb = math.huge end
  if ea ~= eb then return ea < eb end
  if a.created ~= b.created then return a.created < b.created end
  return a.id < b.id
end

-- The user's blocks in spending order (one HGETALL).
local function blocks_of(user)
  local all = redis.call('HGETALL', user)
  local out = {}
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'g:' then
      local kind, prio, exp, created, rem =
        string.match(all[i + 1], '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
      out[#out + 1] = {id = string.sub(all[i], 3), kind = kind, prio = tonumber(prio),
                       exp = tonumber(exp), created = tonumber(created), rem = tonumber(rem)}
    end
  end
  table.sort(out, spends_before)
  return out
end

-- Open a block; nil when the user already has MAX_BLOCKS.
local function open_block(user, id, kind, prio, exp, amount)
  if #blocks_of(user) >= MAX_BLOCKS then return nil end
  local b = {id = id, kind = kind, prio = prio or BLOCK_PRIORITY[kind], exp = exp or 0,
             created = H.now, rem = amount}
  redis.call('HSET', user, 'g:' .. id, block_value(b))
  return b
end

-- Take amount from the blocks in spending order: one HSET of the changed remainders, one HDEL
-- of the emptied blocks (an allocation block stays, empty, until its period ends). Returns the
-- draws as 'id:micro' strings in order, or nil (nothing changed) when the blocks hold less.
local function draw(user, amount)
  local blocks, left = blocks_of(user), amount
  local draws, set, gone = {}, {}, {}
  for _, b in ipairs(blocks) do
    if left == 0 then break end
    local take = math.min(b.rem, left)
    if take > 0 then
      b.rem, left = b.rem - take, left - take
      draws[#draws + 1] = b.id .. ':' .. int(take)
      if b.rem == 0 and b.kind ~= 'allocation' then
        gone[#gone + 1] = 'g:' .. b.id
      else
        set[#set + 1] = 'g:' .. b.id
        set[#set + 1] = block_value(b)
      end
    end
  end
  if left > 0 then return nil end
  if #set > 0 then redis.call('HSET', user, unpack(set)) end
  if #gone > 0 then redis.call('HDEL', user, unpack(gone)) end
  return draws
end

-- The open blocks as an event carries them: 'id:remaining' joined by ',', in spending order.
local function blocks_text(user)
  local parts = {}
  for _, b in ipairs(blocks_of(user)) do parts[#parts + 1] = b.id .. ':' .. int(b.rem) end
  return table.concat(parts, ',')
end
