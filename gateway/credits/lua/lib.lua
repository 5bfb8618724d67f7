-- Shared by every script (prepended when the scripts are loaded; MAX, the numeric(12,6) maximum,
-- BACKLOG_MAX, the most unflushed events a shard may hold, and MAX_BLOCKS, the most open credit
-- blocks a user may hold, are injected before it; gateway/credits/scripts.py).
-- Every mutating script starts with the same ARGV header, filled by the service:
--   ARGV[1] user_id  ARGV[2] clock offset (ms, 0 in production; tests move time with it)
--   ARGV[3] the allocation period: 'month', 'week' or 'day'
--   ARGV[4] transaction id for a renewal, if one happens
-- The helpers read it through H, which a script applying many changes (apply_many.lua) points at
-- each item's user and renewal id in turn.
--
-- One clock for money: "now" is Redis's own TIME, read inside the script, whatever the calling
-- instance's clock says, so every hold expiry and period boundary is judged on the same clock by
-- every gateway, and in the order the calls reach Redis. The offset only lets tests cross months
-- without sleeping; nothing Redis expires (key TTLs) is computed from it.

-- The civil date (proleptic Gregorian, UTC) of a day counted from 1970-01-01 (H. Hinnant's
-- days-to-civil algorithm, in whole numbers).
local function civil(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

-- Now in epoch milliseconds: Redis's TIME plus the offset; and Redis's own seconds, for what
-- Redis expires (idempotency buckets), which never follows the offset.
local function clock_ms(offset)
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(offset),
         tonumber(t[1])
end

-- A time (epoch ms) as ISO 8601 in UTC, as Python's datetime.isoformat() writes it.
local function iso(ms)
  local day = math.floor(ms / 86400000)
  local y, m, d = civil(day)
  local rest = ms - day * 86400000
  local s = math.floor(rest / 1000)
  local frac = ''
  if rest % 1000 ~= 0 then frac = string.format('.%03d000', rest % 1000) end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d%s+00:00', y, m, d, math.floor(s / 3600),
                       math.floor(s / 60) % 60, s % 60, frac)
end

-- The start of the period holding ms, in epoch seconds (calendar month, ISO week beginning on
-- Monday, or day, in UTC: gateway/credits/clock.py period_start, tested to agree).
local function period_of(ms, kind)
  local day = math.floor(ms / 86400000)
  if kind == 'week' then
    day = day - (day + 3) % 7  -- 1970-01-01 was a Thursday
  elseif kind == 'month' then
    local _, _, d = civil(day)
    day = day - d + 1
  end
  return day * 86400
end

local H = {uid = ARGV[1], rtxn = ARGV[4]}
H.now, H.real = clock_ms(ARGV[2])
H.pstart = period_of(H.now, ARGV[3])

local function int(n) return string.format('%d', n) end

-- The answer for a user Redis does not hold; now tells the cold path the time on the one clock.
local function miss() return {'miss', int(H.now)} end

-- The period's spending, as recorded: never past MAX (numeric(12,6) in PostgreSQL). A cap is at
-- most MAX, so no decision changes.
local function add_spent(spent, amount) return math.min(spent + amount, MAX) end

-- What a user can spend: the balance less open holds (shown as 0, never below: a renewal or a
-- downgrade can leave holds larger than the balance).
local function avail(bal, held) return int(math.max(bal - held, 0)) end

-- The 402 answer when spending amount on top of the open holds would pass the monthly cap or
-- the balance; nil when it may go ahead.
local function refuse_spend(bal, spent, held, cap, amount)
  if cap ~= '' and spent + held + amount > tonumber(cap) then
    return {'cap', avail(bal, held), int(spent + held), cap}
  end
  if bal - held - amount < 0 then return {'nsf', avail(bal, held)} end
  return nil
end

-- Credit blocks (docs/credit-blocks.md): a user's balance is the sum of its open blocks, kept in
-- spending order in one field of the user hash, 'blks': entries
-- 'remaining:id:kind:priority:expires_ms:created_ms:granted' joined by ',' (expires_ms 0: never;
-- granted: all that was put in the block; an entry written before it had six values), the same
-- text the ledger event carries. 'bal' stays the sum, so every check still reads one field; a
-- debit rewrites only the entries it draws from (drawn from the front), so its cost hardly grows
-- with the number of blocks. 'nexp' is the earliest expiry of an open block (0: none), so a call
-- knows from one field whether a block is due to expire. A user loaded before blocks has no
-- 'blks'.
local BLOCK_PRIORITY = {allocation = 10, rollover = 15, bonus = 20, adjustment = 25,
                        purchase = 30}

local function entry_of(b)
  return int(b.rem) .. ':' .. b.id .. ':' .. b.kind .. ':' .. int(b.prio) .. ':' .. int(b.exp) ..
         ':' .. int(b.created) .. ':' .. int(b.amt)
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

local function parse_blocks(text)
  local out = {}
  for e in string.gmatch(text or '', '[^,]+') do
    local rem, id, kind, prio, exp, created, amt =
      string.match(e, '^([^:]*):([^:]*):([^:]*):([^:]*):([^:]*):([^:]*):?([^:]*)$')
    out[#out + 1] = {id = id, kind = kind, prio = tonumber(prio), exp = tonumber(exp),
                     created = tonumber(created), rem = tonumber(rem),
                     amt = tonumber(amt) or tonumber(rem)}
  end
  return out
end

-- The blocks as text, sorted into spending order first.
local function join_blocks(blocks)
  table.sort(blocks, spends_before)
  local parts = {}
  for i, b in ipairs(blocks) do parts[i] = entry_of(b) end
  return table.concat(parts, ',')
end

-- A new block: priority by kind unless given (prio), expiring at exp (epoch ms, 0 or nil: never).
local function new_block(id, kind, amount, prio, exp)
  if not BLOCK_PRIORITY[kind] then kind = 'adjustment' end
  return {id = id, kind = kind, prio = prio or BLOCK_PRIORITY[kind], exp = exp or 0,
          created = H.now, rem = amount, amt = amount}
end

-- The earliest expiry of the blocks (epoch ms), 0 when none expires ('nexp').
local function next_expiry(blocks)
  local nxt = 0
  for _, b in ipairs(blocks) do
    if b.exp > 0 and (nxt == 0 or b.exp < nxt) then nxt = b.exp end
  end
  return nxt
end

-- A user's blocks text ('blks'); for a user loaded before blocks (nil), its blocks made from
-- its balance as the migration made PostgreSQL's: the allocation left (up to the balance) as
-- the allocation block, the rest as a purchase. alloc is read only then, when not given.
local function blocks_or_legacy(user, text, bal, alloc)
  if text then return text end
  alloc = alloc or tonumber(redis.call('HGET', user, 'alloc'))
  local a = math.min(bal, alloc)
  local blocks = {new_block('a-' .. H.rtxn, 'allocation', a)}
  if bal > a then blocks[2] = new_block('p-' .. H.rtxn, 'purchase', bal - a) end
  return join_blocks(blocks)
end

-- Take amount from the blocks text, front first: entries it empties close (an allocation
-- block stays, empty, until its period ends); the entries after the last one drawn are kept
-- as they are, unread. Returns the new text, the draws ('id:micro' strings) and the entries the
-- draw changed (a closed one with remaining 0: what a usage event carries), or nil when the
-- blocks hold less.
local function draw(text, amount)
  -- the common case first, with one anchored match: the front block covers the amount
  local rem, id = string.match(text, '^(%d+):([^:,]*)')
  if rem and tonumber(rem) > amount then
    local tail = string.sub(text, #rem + 1)
    local stop = string.find(tail, ',', 1, true)
    local changed = int(tonumber(rem) - amount) .. (stop and string.sub(tail, 1, stop - 1) or tail)
    return int(tonumber(rem) - amount) .. tail, {id .. ':' .. int(amount)}, changed
  end
  local out, draws, changed, left, pos, n = {}, {}, {}, amount, 1, #text
  while left > 0 and pos <= n do
    local stop = string.find(text, ',', pos, true) or (n + 1)
    local e = string.sub(text, pos, stop - 1)
    local digits, tail = string.match(e, '^(%d+)(:.*)$')
    local rem = tonumber(digits)
    local take = math.min(rem, left)
    if take > 0 then
      left, rem = left - take, rem - take
      draws[#draws + 1] = string.match(tail, '^:([^:]*)') .. ':' .. int(take)
      changed[#changed + 1] = int(rem) .. tail
      if rem > 0 or string.find(tail, ':allocation:', 1, true) then
        out[#out + 1] = int(rem) .. tail
      end
    else
      out[#out + 1] = e
    end
    pos = stop + 1
  end
  if left > 0 then return nil end
  if pos <= n then out[#out + 1] = string.sub(text, pos) end
  return table.concat(out, ','), draws, table.concat(changed, ',')
end

-- Return amount of a debit to the blocks it drew from (docs/credit-blocks.md, refunds): draws,
-- the debit's 'id:micro' in drawing order, are undone from their end, after the done micro
-- its earlier refunds returned, so a refund gives back what a smaller debit would not have
-- drawn. A block still open gets its share back; a closed one that could still be spent (its
-- expiry not reached, not a past period's allocation) reopens with its share, as meta (the
-- drawn blocks as PostgreSQL holds them: 'id:kind:priority:expires_ms:created_ms:granted')
-- describes it; the share of a block that has expired since (or of a past period's allocation)
-- is returned and expires again at once. What the draws do not cover (a debit from before
-- blocks, or a user already holding MAX_BLOCKS) goes to the user's non-expiring adjustment
-- block (opened as id). Returns the new text, the returns ('id:-micro', the refund event's
-- draws), the shares that expire again ('id:micro') and their sum.
local function credit_back(text, draws, meta, done, amount, id)
  local drawn = {}
  for d in string.gmatch(draws or '', '[^,]+') do
    local bid, micro = string.match(d, '^(.*):(%d+)$')
    drawn[#drawn + 1] = {bid, tonumber(micro)}
  end
  local known = {}
  for m in string.gmatch(meta or '', '[^,]+') do
    local bid, kind, prio, exp, created, amt =
      string.match(m, '^([^:]*):([^:]*):([^:]*):([^:]*):([^:]*):([^:]*)$')
    known[bid] = {id = bid, kind = kind, prio = tonumber(prio), exp = tonumber(exp),
                  created = tonumber(created), amt = tonumber(amt), rem = 0}
  end
  local blocks, open = parse_blocks(text), {}
  for _, b in ipairs(blocks) do open[b.id] = b end
  local returns, gone, lost, left, skip = {}, {}, 0, amount, done
  for i = #drawn, 1, -1 do
    if left == 0 then break end
    local bid, took = drawn[i][1], drawn[i][2]
    local give = math.min(math.max(took - skip, 0), left)
    skip = math.max(skip - took, 0)
    if give > 0 then
      local b, k = open[bid], known[bid]
      if not b and k and k.kind ~= 'allocation' and (k.exp == 0 or k.exp > H.now)
         and #blocks < MAX_BLOCKS then
        b = k
        blocks[#blocks + 1] = b
        open[bid] = b
      end
      if b or k then
        returns[#returns + 1] = bid .. ':-' .. int(give)
        left = left - give
      end
      if b then
        b.rem = b.rem + give
        if b.amt < b.rem then b.amt = b.rem end
      elseif k then  -- expired since (or a past period's allocation): it expires again
        gone[#gone + 1] = bid .. ':' .. int(give)
        lost = lost + give
      end
    end
  end
  if left > 0 then
    local to = nil
    for _, b in ipairs(blocks) do
      if b.kind == 'adjustment' and b.exp == 0 then to = b end
    end
    if not to and #blocks < MAX_BLOCKS then
      to = new_block(id, 'adjustment', 0)
      blocks[#blocks + 1] = to
    end
    to = to or blocks[#blocks]
    to.rem, to.amt = to.rem + left, to.amt + left
    returns[#returns + 1] = to.id .. ':-' .. int(left)
  end
  return join_blocks(blocks), table.concat(returns, ','), table.concat(gone, ','), lost
end

-- The ledger event: one stream field, e, holding the values in the order of FIELDS in
-- persistence/events.py, joined by the unit separator (0x1F), '' for none. extra holds name/value
-- pairs of the optional fields (model, tin, tout, meta, tier, alloc, cap, reset, ref, actor,
-- resv, blk: the user's blocks after the event ('blks'; a charge carries only the entries its
-- draw changed, marked by a leading '+', so its size does not grow with the blocks held),
-- draws: the blocks a charge took; tcr, tcw, trs: cached input, cache write, reasoning tokens).
local EVENT_POS = {model = 10, tin = 11, tout = 12, meta = 13, tier = 14, alloc = 15, cap = 16,
                   reset = 17, ref = 18, actor = 19, resv = 20, blk = 21, draws = 22,
                   tcr = 23, tcw = 24, trs = 25}
local function emit(stream, t, txn, rid, delta, bal, ver, spent, extra)
  local ev = {t, H.uid, txn, rid, int(delta), int(bal), tostring(ver), int(H.now), int(spent),
              '', '', '', '', '', '', '', '', '', '', '', '', '', '', '', ''}
  for i = 1, #extra, 2 do ev[EVENT_POS[extra[i]]] = extra[i + 1] end
  redis.call('XADD', stream, '*', 'e', table.concat(ev, '\31'))
end

-- Renew the period when the current period began after the user's, or at once when forced (an
-- admin reset): the allocation block closes (its remainder expires, or for a rollover tier,
-- roll '1' or '1:MAX_ROLLOVER' (micro), moves to the rollover block, which then holds at most
-- MAX_ROLLOVER; the rest expires) and a new one opens with the allocation; purchases, bonuses,
-- adjustments and rollovers are untouched. The event's draws say what expired from each closed
-- block. Keyed by period start, so concurrent calls at the boundary renew once, and the period
-- start never moves back, whatever a caller's clock or a forced reset says. rst, the renewal's
-- time (epoch ms), tells a refund whether its debit was spent before the renewal. Returns the
-- balance change, or nil when nothing happened.
local function renew(key, stream, force, rid, txn, extra)
  local st = redis.call('HMGET', key, 'bal', 'alloc', 'pstart', 'roll', 'spent', 'blks')
  local pstart = tonumber(st[3])
  if not force and pstart >= H.pstart then return nil end
  local bal, alloc = tonumber(st[1]), tonumber(st[2])
  local closing, kept, roll = {}, {}, nil
  for _, b in ipairs(parse_blocks(blocks_or_legacy(key, st[6], bal, alloc))) do
    if b.kind == 'allocation' then
      closing[#closing + 1] = b
    else
      if b.kind == 'rollover' and b.exp == 0 then roll = b end
      kept[#kept + 1] = b
    end
  end
  local rolls, cap = string.match(st[4] or '0', '^(%d)(.*)$')
  local room = 0
  if rolls == '1' then
    room = tonumber(string.sub(cap, 2)) or MAX
    if roll then room = room - roll.rem end
  end
  local rest, gone = bal, {}
  for _, b in ipairs(closing) do
    local moved = math.max(math.min(b.rem, room), 0)
    room = room - moved
    if moved > 0 then
      if not roll then
        roll = new_block('r-' .. txn, 'rollover', 0)
        kept[#kept + 1] = roll
      end
      roll.rem, roll.amt = roll.rem + moved, roll.amt + moved
    end
    rest = rest - (b.rem - moved)
    if b.rem > moved then gone[#gone + 1] = b.id .. ':' .. int(b.rem - moved) end
  end
  local fresh = new_block(txn, 'allocation', math.max(math.min(alloc, MAX - rest), 0))
  kept[#kept + 1] = fresh
  local blks = join_blocks(kept)
  local after = rest + fresh.rem
  local start = math.max(pstart, H.pstart)
  local at = start * 1000
  if force then at = math.max(at, H.now) end
  local reset_iso = iso(at)
  redis.call('HSET', key, 'bal', int(after), 'spent', '0', 'pstart', int(start),
             'reset', reset_iso, 'rst', int(at), 'blks', blks)
  local ver = redis.call('HINCRBY', key, 'ver', 1)
  local fields = {'reset', reset_iso, 'blk', blks}
  if #gone > 0 then
    fields[#fields + 1] = 'draws'
    fields[#fields + 1] = table.concat(gone, ',')
  end
  for _, v in ipairs(extra or {}) do fields[#fields + 1] = v end
  emit(stream, 'monthly_reset', txn, rid, after - bal, after, ver, 0, fields)
  return after - bal
end

-- A transaction id derived from the call's renewal id (H.rtxn, a version 7 uuid, used only if
-- the call renews) by setting its version nibble to n: unique as that id is, and apart from it,
-- for the other system entries one call may write (expiry '8', a refund's re-expiry '9').
local function twin_id(n)
  return string.sub(H.rtxn, 1, 14) .. n .. string.sub(H.rtxn, 16)
end

-- An 'expiry' ledger event: lost credits left the balance (fields: blk, draws = each block and
-- what it lost, ...), under the call's twin id n and the request id 'sys:expiry:' and that id.
local function emit_expiry(stream, n, lost, bal, ver, spent, fields)
  local txn = twin_id(n)
  emit(stream, 'expiry', txn, 'sys:expiry:' .. txn, -lost, bal, ver, spent, fields)
end

local function auto_renew(key, stream)
  return renew(key, stream, false, 'sys:reset:' .. int(H.pstart), H.rtxn)
end

-- Expire the blocks whose time has come (expires_ms <= now on the one clock): they close and
-- their remainders leave the balance as one 'expiry' event (its draws: each block and what it
-- lost), exactly once, since the call that expires them removes them. nexp (the field, or the
-- value already read) says whether anything is due, so this costs nothing until then. The
-- event's transaction id is the renewal id's twin '8' (twin_id). Spending and holds are
-- untouched (a hold larger than what is left settles as after a renewal). Returns the amount.
local function expire_due(key, stream, nexp)
  nexp = nexp or redis.call('HGET', key, 'nexp')
  if not nexp or nexp == '0' or tonumber(nexp) > H.now then return 0 end
  local st = redis.call('HMGET', key, 'bal', 'blks', 'spent')
  local kept, gone, lost = {}, {}, 0
  for _, b in ipairs(parse_blocks(st[2])) do
    if b.exp > 0 and b.exp <= H.now then
      lost = lost + b.rem
      gone[#gone + 1] = b.id .. ':' .. int(b.rem)
    else
      kept[#kept + 1] = b
    end
  end
  local nxt = next_expiry(kept)
  if #gone == 0 then  -- spent (and closed) before its time: look again at the next one
    redis.call('HSET', key, 'nexp', int(nxt))
    return 0
  end
  local bal = tonumber(st[1]) - lost
  local blks = join_blocks(kept)
  redis.call('HSET', key, 'bal', int(bal), 'blks', blks, 'nexp', int(nxt))
  local ver = redis.call('HINCRBY', key, 'ver', 1)
  emit_expiry(stream, '8', lost, bal, ver, tonumber(st[3]),
              {'blk', blks, 'draws', table.concat(gone, ',')})
  return lost
end

-- What every call does first to a user it finds: renew the period if it has ended, then expire
-- the blocks whose time has come. Returns the renewal's balance change (nil: none), the expiry.
local function catch_up(key, stream)
  local renewed = auto_renew(key, stream)
  return renewed, expire_due(key, stream)
end

-- Idempotency records (gateway/credits/keys.py): a request's record is a field of its shard's
-- bucket for the time slice the record was made in. Slices are as long as the window (ttl, in
-- seconds) and counted on Redis's own clock, without the tests' offset, since the buckets
-- expire in real time; a request looks in its slice and the one before, so a record answers
-- retries for at least ttl seconds and at most 2 ttl. The caller passes rec: the record's
-- field (7 bytes), the body's fingerprint (its first 4 bytes), the id's kind ('u' a
-- transaction id, 'r' a reservation id, 't' other) and, for 'u' and 'r', the id's 16 bytes
-- (gateway/credits/records.py). A record is 32 bytes, fingerprint, id, change and balance (6
-- bytes each), or, for a 't' id or a balance that is not a number, 'fp|id|change|balance' in
-- text, never 32 bytes long. A retry with the same body replays the stored result; a different
-- body under the same request id is a conflict.
local SIGN6 = 2 ^ 47
local function pack6(n)
  n = n + SIGN6
  local b = {}
  for i = 6, 1, -1 do
    b[i] = n % 256
    n = (n - b[i]) / 256
  end
  return string.char(b[1], b[2], b[3], b[4], b[5], b[6])
end

local function unpack6(s, at)
  local n = 0
  for i = at, at + 5 do n = n * 256 + string.byte(s, i) end
  return n - SIGN6
end

local function hex(s)
  return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end))
end

-- The id a record's 16 bytes stand for: a transaction id (UUID text) or a reservation id
-- ('rv' shard '_' hex, the shard being the bucket's).
local function id_text(kind, bin, bucket)
  local h = hex(bin)
  if kind == 'u' then
    return h:sub(1, 8) .. '-' .. h:sub(9, 12) .. '-' .. h:sub(13, 16) .. '-' .. h:sub(17, 20) ..
           '-' .. h:sub(21, 32)
  end
  return 'rv' .. string.match(bucket, '{s(%d+)}') .. '_' .. h
end

local function slice_key(bucket, ttl, back)
  return bucket .. ':' .. int(math.floor(H.real / ttl) - back)
end

-- The record of rec in bucket, and the key holding it (nil when none).
local function idem_find(bucket, rec, ttl)
  local field = string.sub(rec, 1, 7)
  for back = 0, 1 do
    local key = slice_key(bucket, ttl, back)
    local seen = redis.call('HGET', key, field)
    if seen then return seen, key end
  end
  return nil
end

local function idem_check(bucket, rec, ttl)
  local seen = idem_find(bucket, rec, ttl)
  if not seen then return nil end
  if string.sub(seen, 1, 4) ~= string.sub(rec, 8, 11) then return {'conflict'} end
  if #seen == 32 then
    return {'replay', id_text(string.sub(rec, 12, 12), string.sub(seen, 5, 20), bucket),
            int(unpack6(seen, 21)), int(unpack6(seen, 27))}
  end
  local txn, delta, bal = string.match(seen, '^....|([^|]*)|([^|]*)|([^|]*)|?$')
  return {'replay', txn, delta, bal}
end

local function idem_save(bucket, rec, txn, delta, bal, ttl)
  local key, kind, number = slice_key(bucket, ttl, 0), string.sub(rec, 12, 12), tonumber(bal)
  local value
  if kind ~= 't' and number then
    value = string.sub(rec, 8, 11) .. string.sub(rec, 13, 28) .. pack6(delta) .. pack6(number)
  else
    value = string.sub(rec, 8, 11) .. '|' .. txn .. '|' .. int(delta) .. '|' .. bal
    if #value == 32 then value = value .. '|' end
  end
  redis.call('HSET', key, string.sub(rec, 1, 7), value)
  -- the slice ends at (slice + 1) * ttl; its last record must live ttl after that
  redis.call('EXPIRE', key, (math.floor(H.real / ttl) + 2) * ttl - H.real + 1, 'NX')
end

-- Return expired holds (score <= now) to the user: they stop counting against the balance.
-- Each expired hold is removed once, so it is returned exactly once. Returns what is still held.
local function purge_holds(key, holds)
  local held = tonumber(redis.call('HGET', key, 'held') or '0')
  if held == 0 then return 0 end
  local gone = redis.call('ZRANGEBYSCORE', holds, '-inf', int(H.now))
  if #gone == 0 then return held end
  for _, member in ipairs(gone) do
    held = held - tonumber(string.match(member, '|(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', holds, '-inf', int(H.now))
  redis.call('HSET', key, 'held', int(held))
  return held
end

-- The opening every balance-changing script shares, in this order: a request id seen before is
-- answered from its record (a replay, or a conflict when the body differs); a user missing from
-- Redis is 'miss' (hydrate first); a full backlog is 'backlog' (nothing changed); then the period
-- renews if it has ended and expired holds are returned. Returns (answer) to stop with that
-- answer, or (nil, held, state) to go on, state being the user's {pstart, held, bal, spent, cap,
-- ver, blks, nexp} after any renewal and expiry. One HMGET reads all of it: the renewal, the
-- expiry and the holds are looked at again only when they have something to do.
local USER_STATE = {'pstart', 'held', 'bal', 'spent', 'cap', 'ver', 'blks', 'nexp'}
local function open_user(user, idem, rec, ttl, stream, holds)
  local seen = idem_check(idem, rec, ttl)
  if seen then return seen end
  local st = redis.call('HMGET', user, unpack(USER_STATE))
  if not st[3] then return miss() end
  if redis.call('XLEN', stream) >= BACKLOG_MAX then return {'backlog'} end
  local renewed = tonumber(st[1]) < H.pstart and auto_renew(user, stream)
  if expire_due(user, stream, st[8] or '0') > 0 or renewed then
    st = redis.call('HMGET', user, unpack(USER_STATE))
  end
  local held = 0
  if st[2] and st[2] ~= '0' then held = purge_holds(user, holds) end
  return nil, held, st
end

-- Apply one signed credit change (debit < 0, grant > 0) to a user, at most once per request id:
-- the opening (open_user), cap and balance checks, the update, the ledger event, the record.
-- Balances returned are what the user can spend: the balance less its holds. Returns
-- {'ok'|'replay', txn, delta, available}, {'conflict'}, {'nsf', available},
-- {'cap', available, spent, cap}, {'overflow', available}, {'blocks', available} (a grant to a
-- user holding MAX_BLOCKS), {'past', now} (a grant expiring before now), {'miss'} or
-- {'backlog'}. A debit draws from the blocks in order; a grant opens a block of its kind (id:
-- its transaction id), with spec 'priority:expires_ms' ('' parts: the kind's priority, never;
-- '+ms' for an expiry that long after now).
-- A charge's amount (micro, signed): a number, or, for a priced call while some tiers pay a
-- markup (gateway/credits/pricing.py by_tier), the model price's amount then each such tier's,
-- 'base\31tier\30amount\31...': the user's tier's, else the base. Read inside the script, so a
-- tier change cannot come between the price and the charge.
local function for_tier(user, amount)
  local n = tonumber(amount)
  if n then return n end
  local tier = redis.call('HGET', user, 'tier')
  local base
  for part in string.gmatch(amount, '[^\31]+') do
    local name, value = string.match(part, '^(.*)\30(.*)$')
    if not name then base = tonumber(part)
    elseif name == tier then return tonumber(value) end
  end
  return base
end

-- Every amount a charge could be (for_tier): a replayed commit's charge is one of them.
local function any_amount(amount, charged)
  if amount == charged then return true end
  for part in string.gmatch(amount, '[^\31]+') do
    if (string.match(part, '\30(.*)$') or part) == charged then return true end
  end
  return false
end

local function apply_change(user, idem, stream, holds, delta, rec, txn, ttl, rid, event, extra,
                            spec)
  local stop, held, st = open_user(user, idem, rec, ttl, stream, holds)
  if stop then return stop end
  delta = for_tier(user, delta)
  local bal, spent = tonumber(st[3]), tonumber(st[4])
  if delta < 0 then
    local refused = refuse_spend(bal, spent, held, st[5], -delta)
    if refused then return refused end
  end
  local after = bal + delta
  if after > MAX then return {'overflow', avail(bal, held)} end
  local blks, draws, listed = blocks_or_legacy(user, st[7], bal), nil, nil
  if delta < 0 then
    spent = add_spent(spent, -delta)
    blks, draws, listed = draw(blks, -delta)
    if not blks then return redis.error_reply('credit blocks hold less than the balance') end
    listed = '+' .. listed  -- only what changed (the flusher reads '+' as a patch)
    if not st[7] then listed = blks end  -- blocks just made from the balance: all of them
  else
    local prio, rel, exp = string.match(spec or '', '^(%d*):?(%+?)(%d*)$')
    exp = tonumber(exp) or 0
    if rel == '+' then exp = H.now + exp end  -- relative: from now on the one clock
    if exp > 0 and exp <= H.now then return {'past', int(H.now)} end
    local blocks = parse_blocks(blks)
    if #blocks >= MAX_BLOCKS then return {'blocks', avail(bal, held)} end
    blocks[#blocks + 1] = new_block(txn, event, delta, tonumber(prio), exp)
    blks = join_blocks(blocks)
    local due = tonumber(st[8] or '0') or 0  -- no field: a user cached before expiries
    if exp > 0 and (due == 0 or exp < due) then redis.call('HSET', user, 'nexp', int(exp)) end
  end
  local ver = int(tonumber(st[6]) + 1)
  redis.call('HSET', user, 'bal', int(after), 'spent', int(spent), 'ver', ver, 'blks', blks)
  extra[#extra + 1] = 'blk'
  extra[#extra + 1] = listed or blks
  if draws then
    extra[#extra + 1] = 'draws'
    extra[#extra + 1] = table.concat(draws, ',')
  end
  emit(stream, event, txn, rid, delta, after, ver, spent, extra)
  idem_save(idem, rec, txn, delta, avail(after, held), ttl)
  return {'ok', txn, int(delta), avail(after, held)}
end
