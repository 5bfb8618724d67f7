-- Bring a user back in step with PostgreSQL after a failover took back changes the flusher had
-- already booked (gateway/flusher/resync.py): the balance moves by what the ledger holds beyond
-- Redis, measured at the same point of the stream, and the version jumps above PostgreSQL's, in
-- one 'resync' event (amount 0 in the ledger, which already holds those changes; its blocks as
-- a full listing, so PostgreSQL's blocks follow).
-- KEYS[1] user state hash  KEYS[2] shard event stream
-- ARGV[1..4] the common header (lib.lua; ARGV[4] the resync's transaction id)
-- ARGV[5] the user's ledger sum (micro) in PostgreSQL, the flushed events included
-- ARGV[6] PostgreSQL's version of the user  ARGV[7] the last stream entry flushed
-- ARGV[8] the resync's id (the same flush asks again after a rollback: made once)
-- ARGV[9] who asks, for the audit log (system:failover, the flusher; cli:<login>, a repair)
-- The balance at that entry is today's less the amounts of the user's events after it (read
-- from the stream: a failover is rare, and the backlog is bounded by BACKLOG_MAX).
-- Returns {'ok', fence, delta}, or {'same', fence, delta} for one already made, {'none'} when
-- Redis agrees and is ahead (nothing to do), {'miss'} when Redis does not hold the user (its
-- next call loads it from PostgreSQL).
if redis.call('EXISTS', KEYS[1]) == 0 then return {'miss'} end
local st = redis.call('HMGET', KEYS[1], 'bal', 'ver', 'rsx', 'blks', 'alloc', 'spent')
if st[3] then
  local id, fence, delta = string.match(st[3], '^(.*)|(%d+)|(-?%d+)$')
  if id == ARGV[8] then return {'same', fence, delta} end
end
local bal, ver, pg_ver = tonumber(st[1]), tonumber(st[2]), tonumber(ARGV[6])
local later = 0
local sep = '\31'
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '(' .. ARGV[7], '+')) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then
      local line = fields[i + 1]
      local a = string.find(line, sep, 1, true)
      local b = string.find(line, sep, a + 1, true)
      if string.sub(line, a + 1, b - 1) == H.uid then
        local c = string.find(line, sep, b + 1, true)
        local d = string.find(line, sep, c + 1, true)
        local e = string.find(line, sep, d + 1, true)
        later = later + tonumber(string.sub(line, d + 1, e - 1))
      end
    end
  end
end
local delta = tonumber(ARGV[5]) - (bal - later)
if delta == 0 and ver > pg_ver then return {'none'} end
local text = blocks_or_legacy(KEYS[1], st[4], bal, tonumber(st[5]))
if delta < 0 then
  local drawn = draw(text, -delta)
  if drawn then
    text = drawn
  else  -- the failover let the user spend more than it had: every block is emptied
    local empty = {}
    for _, blk in ipairs(parse_blocks(text)) do
      blk.rem = 0
      if blk.kind == 'allocation' then empty[#empty + 1] = blk end
    end
    text = join_blocks(empty)
  end
elseif delta > 0 then
  local blocks = parse_blocks(text)
  blocks[#blocks + 1] = new_block('r-' .. H.rtxn, 'adjustment', delta)
  text = join_blocks(blocks)
end
bal = bal + delta
local fence = math.max(ver, pg_ver) + 1
redis.call('HSET', KEYS[1], 'bal', int(bal), 'blks', text, 'nexp',
           int(next_expiry(parse_blocks(text))), 'ver', int(fence),
           'rsx', ARGV[8] .. '|' .. int(fence) .. '|' .. int(delta))
emit(KEYS[2], 'resync', H.rtxn, 'sys:resync:' .. H.rtxn, 0, bal, fence, tonumber(st[6] or '0'),
     {'blk', text, 'actor', ARGV[9],
      'meta', '{"delta_micro":' .. int(delta) .. ',"after_entry":"' .. ARGV[7] .. '"}'})
return {'ok', int(fence), int(delta)}
