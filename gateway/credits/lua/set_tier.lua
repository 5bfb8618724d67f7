-- Move a user to a tier: allocation, cap and rollover change, the allocation block (and so the
-- balance) moves by the allocation's difference (never below 0, never past MAX), recorded as an
-- 'allocation' event.
-- KEYS[1] user state hash  KEYS[2] shard event stream  KEYS[3] the user's holds
-- ARGV[1..4] the common header (lib.lua)  ARGV[5] tier  ARGV[6] allocation (micro)
-- ARGV[7] cap (micro or '')  ARGV[8] roll ('1' or '0')  ARGV[9] transaction id  ARGV[10] request id
-- ARGV[11] the acting key's name (for the audit log)
-- Balances returned are available credits (less holds).
-- {'backlog'} when the shard's unflushed events reached BACKLOG_MAX (nothing changed).
-- Returns {'ok', txn, delta, balance}, {'same', '', '0', balance}, {'overflow', balance}, {'miss'}.
if redis.call('EXISTS', KEYS[1]) == 0 then return miss() end
if redis.call('XLEN', KEYS[2]) >= BACKLOG_MAX then return {'backlog'} end
catch_up(KEYS[1], KEYS[2])
local held = purge_holds(KEYS[1], KEYS[3])
local s = redis.call('HMGET', KEYS[1], 'bal', 'alloc', 'tier', 'cap', 'roll', 'spent', 'blks')
if s[3] == ARGV[5] and s[2] == ARGV[6] and s[4] == ARGV[7] and s[5] == ARGV[8] then
  return {'same', '', '0', int(tonumber(s[1]) - held)}
end
local bal = tonumber(s[1])
-- the allocation block moves by the allocations' difference, never below 0 nor the balance past
-- MAX; the other blocks are untouched
local blocks, ablock = parse_blocks(blocks_or_legacy(KEYS[1], s[7], bal, tonumber(s[2]))), nil
for _, b in ipairs(blocks) do
  if b.kind == 'allocation' then ablock = b end
end
if not ablock then
  ablock = new_block(ARGV[9], 'allocation', 0)
  blocks[#blocks + 1] = ablock
end
local before = ablock.rem
ablock.rem = math.max(before + tonumber(ARGV[6]) - tonumber(s[2]), 0)
local delta = ablock.rem - before
local after = bal + delta
if after > MAX then return {'overflow', avail(bal, held)} end
local blks = join_blocks(blocks)
redis.call('HSET', KEYS[1], 'bal', int(after), 'alloc', ARGV[6], 'tier', ARGV[5], 'cap', ARGV[7],
           'roll', ARGV[8], 'blks', blks)
local ver = redis.call('HINCRBY', KEYS[1], 'ver', 1)
emit(KEYS[2], 'allocation', ARGV[9], ARGV[10], delta, after, ver, tonumber(s[6]),
     {'tier', ARGV[5], 'alloc', ARGV[6], 'cap', ARGV[7], 'actor', ARGV[11],
      'blk', blks})
return {'ok', ARGV[9], int(delta), avail(after, held)}
