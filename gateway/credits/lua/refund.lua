-- Return all or part of a debit, never more than was charged across all its refunds, to the
-- blocks it drew from (lib.lua credit_back): the refund event's draws say where ('id:-micro');
-- the share of a block that has expired since expires again at once, as an 'expiry' event in
-- the same call (docs/credit-blocks.md).
-- The debit's refund tracker (KEYS[5]) counts its refunds while it lives; once it is gone (it
-- expires, or Redis lost it), only PostgreSQL's sum read after the user's shard was flushed is
-- trusted (ARGV[14] = '1'), since refunds not yet flushed are missing from any earlier read:
-- otherwise the answer is {'recount'} and nothing changes.
-- KEYS[1] user state hash  KEYS[2] idempotency bucket  KEYS[3] shard event stream
-- KEYS[4] the user's holds  KEYS[5] the debit's refund tracker (micro refunded so far)
-- ARGV[1..4] the common header (lib.lua)  ARGV[5] amount (micro; 0 = all that is left)
-- ARGV[6] idempotency record (lib.lua)  ARGV[7] transaction id  ARGV[8] idempotency ttl (s)
-- ARGV[9] request id  ARGV[10] micro charged by the debit  ARGV[11] micro of its refunds
-- in PostgreSQL  ARGV[12] debit transaction id  ARGV[13] the debit's time (epoch ms): its refund
-- lowers the period's spending only when it was spent after the last renewal (rst), so a refund
-- of a debit from before an admin reset cannot reopen the cap  ARGV[14] '1' when ARGV[11] was
-- read after the shard was flushed  ARGV[15] the acting key's name  ARGV[16] the debit's draws
-- ('id:micro' in drawing order)  ARGV[17] those blocks as PostgreSQL holds them (credit_back)
-- {'backlog'} when the shard's unflushed events reached BACKLOG_MAX (nothing changed).
-- Returns {'ok', txn, amount, available, expired again}, {'replay', txn, amount,
--         'available;expired again'},
--         {'conflict'}, {'exhausted'},
--         {'exceeds', refundable}, {'overflow', available}, {'recount'} or {'miss', now}.
local stop, held, st = open_user(KEYS[1], KEYS[2], ARGV[6], tonumber(ARGV[8]), KEYS[3],
                                 KEYS[4])
if stop then return stop end
local tracked = redis.call('GET', KEYS[5])
if not tracked and ARGV[14] ~= '1' then return {'recount'} end
local done = tonumber(tracked or ARGV[11])
local left = tonumber(ARGV[10]) - done
if left <= 0 then return {'exhausted'} end
local amount = tonumber(ARGV[5])
if amount == 0 then amount = left end
if amount > left then return {'exceeds', int(left)} end
local bal, spent = tonumber(st[3]), tonumber(st[4])
if bal + amount > MAX then return {'overflow', avail(bal, held)} end
bal = bal + amount
local rst = tonumber(redis.call('HGET', KEYS[1], 'rst') or tonumber(st[1]) * 1000)
if tonumber(ARGV[13]) >= rst then spent = math.max(spent - amount, 0) end
local blks, returns, gone, lost = credit_back(blocks_or_legacy(KEYS[1], st[7], bal - amount),
                                              ARGV[16], ARGV[17], done, amount, ARGV[7])
local ver = tonumber(st[6]) + 1
redis.call('HSET', KEYS[1], 'bal', int(bal), 'spent', int(spent), 'ver', int(ver), 'blks', blks,
           'nexp', int(next_expiry(parse_blocks(blks))))
redis.call('SET', KEYS[5], int(done + amount), 'EX', tonumber(ARGV[8]))
emit(KEYS[3], 'refund', ARGV[7], ARGV[9], amount, bal, ver, spent,
     {'ref', ARGV[12], 'actor', ARGV[15], 'blk', blks, 'draws', returns})
if lost > 0 then  -- returned to blocks expired since: they expire again, at once
  bal, ver = bal - lost, ver + 1
  redis.call('HSET', KEYS[1], 'bal', int(bal), 'ver', int(ver))
  emit_expiry(KEYS[3], '9', lost, bal, ver, spent, {'ref', ARGV[7], 'blk', blks, 'draws', gone})
end
-- the record keeps what expired again beside the balance ('available;expired'), so a replay
-- answers as the refund did
idem_save(KEYS[2], ARGV[6], ARGV[7], amount, avail(bal, held) .. ';' .. int(lost),
          tonumber(ARGV[8]))
return {'ok', ARGV[7], int(amount), avail(bal, held), int(lost)}
