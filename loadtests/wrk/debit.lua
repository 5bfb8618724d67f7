-- wrk script: POST debits with a unique request_id each (or a small pool when RETRY_POOL > 0).
-- Environment: USERS (how many user ids, default 1000), PREFIX (user id prefix), AMOUNT,
-- RETRY_POOL (0 = every request new), NEW_USERS (1: every request names a user never seen, the
-- cold path's rate), BATCH (items per request on the batch endpoint, 0 = single),
-- KEY (bearer key, empty for the baselines), RATE and CONNS (when RATE > 0, each of the CONNS
-- connections waits CONNS/RATE seconds between its requests, in whole milliseconds on average:
-- a paced load of about RATE requests/s less the time the answers take).
local users = tonumber(os.getenv("USERS") or "1000")
local prefix = os.getenv("PREFIX") or "bench"
local amount = os.getenv("AMOUNT") or "0.000100"
local pool = tonumber(os.getenv("RETRY_POOL") or "0")
local new_users = os.getenv("NEW_USERS") == "1"
local batch = tonumber(os.getenv("BATCH") or "0")
local key = os.getenv("KEY") or ""
local rate = tonumber(os.getenv("RATE") or "0")
local gap = (rate > 0) and (tonumber(os.getenv("CONNS") or "1") * 1000 / rate) or 0
local counter = 0
local thread_id = 0
local threads = {}
statuses = {}

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
  math.randomseed(os.time() + (tid or 0))
  run = tostring(os.time()) .. "-" .. tostring(tid or 0) .. "-" .. tostring(math.random(1e9))
end

local function item()
  counter = counter + 1
  local rid = (pool > 0) and ("retry-" .. (counter % pool)) or (run .. "-" .. counter)
  local user = prefix .. "-" .. (counter % users)
  if pool > 0 then user = prefix .. "-0" end
  if new_users then user = prefix .. "-" .. run .. "-" .. counter end
  return '{"user_id":"' .. user .. '","amount":"' .. amount .. '","request_id":"' .. rid .. '"}'
end

function request()
  if batch > 0 then
    local items = {}
    for i = 1, batch do items[i] = item() end
    return wrk.format(nil, nil, nil, '{"debits":[' .. table.concat(items, ",") .. ']}')
  end
  return wrk.format(nil, nil, nil, item())
end

if gap > 0 then
  function delay()  -- wrk waits this many whole milliseconds; the fractions are drawn at random
    local whole = math.floor(gap)
    if math.random() < gap - whole then return whole + 1 end
    return whole
  end
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local codes = {}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do codes[code] = (codes[code] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(codes) do parts[#parts + 1] = code .. ":" .. n end
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d statuses=%s\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    table.concat(parts, ",")))
end
