-- Shared by every script (prepended when the scripts are loaded; MAX, the numeric(12,6) maximum,
-- and BACKLOG_MAX, the most unflushed events a shard may hold, are injected before it).
-- Every mutating script starts with the same ARGV header, filled by the service:
--   ARGV[1] user_id  ARGV[2] now (ms)  ARGV[3] current period start (epoch s)
--   ARGV[4] current period start (ISO 8601)  ARGV[5] transaction id for a renewal, if one happens
-- The helpers read it through H, which a script applying many changes (apply_many.lua) points at
-- each item's user and renewal id in turn.
local H = {uid = ARGV[1], now = ARGV[2], pstart = ARGV[3], piso = ARGV[4], rtxn = ARGV[5]}

local function int(n) return string.format('%d', n) end

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

-- The ledger event: one stream field, e, holding the values in the order of FIELDS in
-- persistence/events.py, joined by the unit separator (0x1F), '' for none. extra holds name/value
-- pairs of the optional fields (model, tin, tout, meta, tier, alloc, cap, reset, ref, actor,
-- resv).
local EVENT_POS = {model = 10, tin = 11, tout = 12, meta = 13, tier = 14, alloc = 15, cap = 16,
                   reset = 17, ref = 18, actor = 19, resv = 20}
local function emit(stream, t, txn, rid, delta, bal, ver, spent, extra)
  local ev = {t, H.uid, txn, rid, int(delta), int(bal), tostring(ver), H.now, int(spent),
              '', '', '', '', '', '', '', '', '', '', ''}
  for i = 1, #extra, 2 do ev[EVENT_POS[extra[i]]] = extra[i + 1] end
  redis.call('XADD', stream, '*', 'e', table.concat(ev, '\31'))
end

-- Renew the period (new allocation; unused credits expire, or roll over when roll = 1) when the
-- current period began after the user's, or when forced. Keyed by period start, so concurrent
-- calls at the boundary renew once. Returns the balance change, or nil when nothing happened.
local function renew(key, stream, force, rid, txn, reset_iso, extra)
  local st = redis.call('HMGET', key, 'bal', 'alloc', 'pstart', 'roll', 'spent')
  if not force and tonumber(st[3]) >= tonumber(H.pstart) then return nil end
  local bal, alloc = tonumber(st[1]), tonumber(st[2])
  local after = alloc
  if st[4] == '1' then after = math.min(bal + alloc, MAX) end
  redis.call('HSET', key, 'bal', int(after), 'spent', '0', 'pstart', H.pstart, 'reset', reset_iso)
  local ver = redis.call('HINCRBY', key, 'ver', 1)
  local fields = {'reset', reset_iso}
  for _, v in ipairs(extra or {}) do fields[#fields + 1] = v end
  emit(stream, 'monthly_reset', txn, rid, after - bal, after, ver, 0, fields)
  return after - bal
end

local function auto_renew(key, stream)
  return renew(key, stream, false, 'sys:reset:' .. H.pstart, H.rtxn, H.piso)
end

-- Idempotency records: 'fingerprint|txn|delta|balance'. A retry with the same body replays the
-- stored result; a different body under the same request id is a conflict.
local function idem_check(key, fp)
  local seen = redis.call('GET', key)
  if not seen then return nil end
  local sfp, txn, delta, bal = string.match(seen, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  if sfp ~= fp then return {'conflict'} end
  return {'replay', txn, delta, bal}
end

local function idem_save(key, fp, txn, delta, bal, ttl)
  redis.call('SET', key, fp .. '|' .. txn .. '|' .. int(delta) .. '|' .. bal, 'EX', ttl)
end

-- Return expired holds (score <= now) to the user: they stop counting against the balance.
-- Each expired hold is removed once, so it is returned exactly once. Returns what is still held.
local function purge_holds(key, holds)
  local held = tonumber(redis.call('HGET', key, 'held') or '0')
  if held == 0 then return 0 end
  local gone = redis.call('ZRANGEBYSCORE', holds, '-inf', H.now)
  if #gone == 0 then return held end
  for _, member in ipairs(gone) do
    held = held - tonumber(string.match(member, '|(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', holds, '-inf', H.now)
  redis.call('HSET', key, 'held', int(held))
  return held
end

-- The opening every balance-changing script shares, in this order: a request id seen before is
-- answered from its record (a replay, or a conflict when the body differs); a user missing from
-- Redis is 'miss' (hydrate first); a full backlog is 'backlog' (nothing changed); then the period
-- renews if it has ended and expired holds are returned. Returns (answer) to stop with that
-- answer, or (nil, held, state) to go on, state being the user's {pstart, held, bal, spent, cap,
-- ver} after any renewal. One HMGET reads all of it: the renewal and the holds are looked at
-- again only when they have something to do.
local function open_user(user, idem, fp, stream, holds)
  local seen = idem_check(idem, fp)
  if seen then return seen end
  local st = redis.call('HMGET', user, 'pstart', 'held', 'bal', 'spent', 'cap', 'ver')
  if not st[3] then return {'miss'} end
  if redis.call('XLEN', stream) >= BACKLOG_MAX then return {'backlog'} end
  if tonumber(st[1]) < tonumber(H.pstart) and auto_renew(user, stream) then
    st = redis.call('HMGET', user, 'pstart', 'held', 'bal', 'spent', 'cap', 'ver')
  end
  local held = 0
  if st[2] and st[2] ~= '0' then held = purge_holds(user, holds) end
  return nil, held, st
end

-- Apply one signed credit change (debit < 0, grant > 0) to a user, at most once per request id:
-- the opening (open_user), cap and balance checks, the update, the ledger event, the record.
-- Balances returned are what the user can spend: the balance less its holds. Returns
-- {'ok'|'replay', txn, delta, available}, {'conflict'}, {'nsf', available},
-- {'cap', available, spent, cap}, {'overflow', available}, {'miss'} or {'backlog'}.
local function apply_change(user, idem, stream, holds, delta, fp, txn, ttl, rid, event, extra)
  local stop, held, st = open_user(user, idem, fp, stream, holds)
  if stop then return stop end
  local bal, spent = tonumber(st[3]), tonumber(st[4])
  if delta < 0 then
    local refused = refuse_spend(bal, spent, held, st[5], -delta)
    if refused then return refused end
  end
  local after = bal + delta
  if after > MAX then return {'overflow', avail(bal, held)} end
  if delta < 0 then spent = spent - delta end
  local ver = int(tonumber(st[6]) + 1)
  redis.call('HSET', user, 'bal', int(after), 'spent', int(spent), 'ver', ver)
  emit(stream, event, txn, rid, delta, after, ver, spent, extra)
  idem_save(idem, fp, txn, delta, avail(after, held), ttl)
  return {'ok', txn, int(delta), avail(after, held)}
end
