-- Put a dead letter back where the flusher takes it, at most once: the entry's event line goes
-- to the end of its shard's event stream and the entry leaves the dead-letter stream, in one
-- step (both keys are in the shard's hash slot).
-- KEYS[1] the shard's dead-letter stream, KEYS[2] its event stream; ARGV[1] the dead entry id.
-- Returns {'ok', new entry id} or {'gone'} (replayed or dropped already).
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return {'gone'} end
local entry, line = found[1][2], nil
for i = 1, #entry, 2 do
  if entry[i] == 'e' then line = entry[i + 1] end
end
if not line then return redis.error_reply('dead letter ' .. ARGV[1] .. ' holds no event line') end
local id = redis.call('XADD', KEYS[2], '*', 'e', line)
redis.call('XDEL', KEYS[1], ARGV[1])
return {'ok', id}
