"""The flush batch's statements: the events of a batch into the ledger (with the blocks each
charge drew from), user_credits and the credit blocks (credit_grants), in one statement; the
reused-request and unbooked follow-ups; a user's open blocks for the cold path. Imported by
persistence/queries.py, so they are part of queries.ALL and prepared on the migrated schema by
the tests like every other."""

from __future__ import annotations

# A flush batch arrives as one text: the events' lines (persistence/events.py: values joined by
# 0x1F, '' for none; amounts in micro-credits, times in epoch milliseconds) joined by 0x1E.
# PostgreSQL splits them, which costs far less than encoding a dozen arrays per batch in Python.
# A line without exactly 25 values (20 for one written before credit blocks: no blk, no draws;
# 22 for one written before the token kinds: no tcr, tcw, trs) gets no transaction id, and the
# NOT NULL on the ledger's id fails the batch: nothing is guessed. The conversions are exact.
_EVENTS = """
(SELECT a[1] AS t, a[2] AS u,
        (CASE WHEN cardinality(a) IN (20, 22, 25) THEN a[3] END)::uuid AS tx,
        a[4] AS rid, a[5]::bigint AS amt, a[6]::bigint AS bal, a[7]::bigint AS ver,
        a[8]::bigint AS ts, a[9] AS spent, a[10] AS model, a[11] AS tin, a[12] AS tout,
        a[13] AS meta, a[14] AS tier, a[15] AS alloc, a[16] AS cap, a[17] AS reset,
        a[18] AS ref, a[19] AS actor, a[20] AS resv, a[21] AS blk, a[22] AS draws,
        a[23] AS tcr, a[24] AS tcw, a[25] AS trs
 FROM string_to_table($1::text, chr(30)) AS line, string_to_array(line, chr(31)) AS a) AS e
"""
_LEDGER_ROW = """
INSERT INTO credit_transactions (id, user_id, transaction_type, amount, balance_after,
                                 request_id, model, input_tokens, output_tokens, metadata,
                                 redis_version, created_at, refund_of, draws,
                                 cached_input_tokens, cache_write_tokens, reasoning_tokens)
SELECT tx, u, t, amt::numeric / 1000000, bal::numeric / 1000000, {request_id},
       NULLIF(model, ''), NULLIF(tin, '')::bigint, NULLIF(tout, '')::bigint,
       NULLIF(meta, '')::jsonb, ver, timestamptz 'epoch' + ts * interval '1 millisecond',
       NULLIF(ref, '')::uuid, NULLIF(draws, ''), NULLIF(tcr, '')::bigint,
       NULLIF(tcw, '')::bigint, NULLIF(trs, '')::bigint
"""

# One statement per flush batch. Every event goes into the ledger at most once (the primary key
# is the event's transaction id; (user_id, request_id) is unique too), and each user's row moves
# to the user's newest state in the batch: the version guard makes replays and stale batches
# no-ops. Tier, allocation and cap change only with a tier event in the batch; the period start
# only with a renewal. Returns the new ledger rows, the rows moved, the batch's users, and the
# users whose versions went back (a failover: the flusher resyncs them).
LEDGER_APPLY_BATCH = f"""
WITH e AS MATERIALIZED (SELECT * FROM {_EVENTS}),
ins AS (
    {_LEDGER_ROW.format(request_id="rid")}
    FROM e
    ON CONFLICT DO NOTHING
    RETURNING user_id AS u, redis_version AS ver
),
-- Users with a new event at a version PostgreSQL's row has passed: Redis lost changes already
-- booked (a failover promoted a replica that lacked them), unless an open resync's fence is
-- above the event (it was written before the resync that corrects it). The flusher resyncs them
-- (gateway/flusher/resync.py). The statement sees user_credits as it was before it.
regressed AS (
    SELECT DISTINCT i.u FROM ins AS i JOIN user_credits AS uc ON uc.user_id = i.u
    WHERE i.ver <= uc.redis_version
      AND NOT EXISTS (SELECT 1 FROM redis_resyncs AS r
                      WHERE r.user_id = i.u AND r.settled_at IS NULL AND r.fence > i.ver)
),
latest AS (
    SELECT DISTINCT ON (u) u, bal, ver, COALESCE(NULLIF(spent, '')::bigint, 0) AS spent, blk, ts
    FROM e ORDER BY u, ver DESC
),
tiers AS (
    SELECT DISTINCT ON (u) u, tier, NULLIF(alloc, '')::bigint AS alloc,
           NULLIF(cap, '')::bigint AS cap
    FROM e WHERE tier <> '' ORDER BY u, ver DESC
),
resets AS (
    SELECT DISTINCT ON (u) u, reset::timestamptz AS reset
    FROM e WHERE reset <> '' ORDER BY u, ver DESC
),
moved AS (
    UPDATE user_credits AS uc
    SET credits_remaining = l.bal::numeric / 1000000,
        redis_version = l.ver,
        tier = COALESCE(t.tier, uc.tier),
        credits_allocated = COALESCE(t.alloc::numeric / 1000000, uc.credits_allocated),
        monthly_cap = CASE WHEN t.tier IS NULL THEN uc.monthly_cap
                           ELSE t.cap::numeric / 1000000 END,
        period_spent = l.spent::numeric / 1000000,
        last_reset = COALESCE(r.reset, uc.last_reset),
        updated_at = now()
    FROM latest AS l LEFT JOIN tiers AS t USING (u) LEFT JOIN resets AS r USING (u)
    WHERE uc.user_id = l.u AND uc.redis_version < l.ver
      AND NOT EXISTS (SELECT 1 FROM redis_resyncs AS r
                      WHERE r.user_id = l.u AND r.settled_at IS NULL AND r.fence > l.ver)
    RETURNING uc.user_id AS u
),
-- a resync is settled once its event (at the fence) has moved the row
settled AS (
    UPDATE redis_resyncs AS r SET settled_at = now()
    FROM latest AS l
    WHERE r.user_id = l.u AND r.settled_at IS NULL AND r.fence <= l.ver
    RETURNING 1
),
-- Credit blocks of the users the batch moves. An event lists the user's blocks after it: all of
-- them, or (a charge, its text starting with '+') only those its draw changed. Each block's
-- newest mention gives its remainder; it is closed when that mention empties it (but an
-- allocation block, which stays until its period ends) or when a newer full listing leaves it
-- out. Open rows the batch does not mention close when the batch has a full listing for the
-- user. An event from before blocks (no blk) mentions none.
mentions AS (
    SELECT e.u, p[2] AS id, p[3] AS kind, p[4]::smallint AS prio,
           NULLIF(p[5], '0')::bigint AS exp, p[6]::bigint AS created, p[1]::bigint AS rem,
           NULLIF(p[7], '')::bigint AS amt, e.ver
    FROM e JOIN moved USING (u),
         string_to_table(NULLIF(ltrim(e.blk, '+'), ''), ',') AS y, string_to_array(y, ':') AS p
),
listed AS (
    SELECT DISTINCT ON (u, id) * FROM mentions ORDER BY u, id, ver DESC
),
fulls AS (
    SELECT DISTINCT ON (u) u, ver FROM e JOIN moved USING (u)
    WHERE e.blk IS NOT NULL AND left(e.blk, 1) <> '+'
    ORDER BY u, ver DESC
),
kept AS (
    INSERT INTO credit_grants AS g (user_id, id, kind, priority, expires_at, created_at,
                                    remaining, amount, redis_version, closed_at)
    SELECT b.u, b.id, b.kind, b.prio, timestamptz 'epoch' + b.exp * interval '1 millisecond',
           timestamptz 'epoch' + b.created * interval '1 millisecond',
           CASE WHEN c.closed THEN 0 ELSE b.rem::numeric / 1000000 END,
           b.amt::numeric / 1000000, l.ver,
           CASE WHEN c.closed THEN timestamptz 'epoch' + l.ts * interval '1 millisecond' END
    FROM listed AS b JOIN latest AS l USING (u) LEFT JOIN fulls AS f USING (u),
         LATERAL (SELECT (b.rem = 0 AND b.kind <> 'allocation') OR f.ver > b.ver AS closed) AS c
    ON CONFLICT (user_id, id) DO UPDATE
    SET remaining = EXCLUDED.remaining, redis_version = EXCLUDED.redis_version,
        closed_at = EXCLUDED.closed_at, amount = COALESCE(EXCLUDED.amount, g.amount)
    RETURNING 1
),
-- the open rows of users with a full listing in the batch that the batch does not mention (a
-- set difference, hashed, rather than a lookup per row)
unlisted AS (
    SELECT g.user_id, g.id FROM credit_grants AS g JOIN fulls ON g.user_id = fulls.u
    WHERE g.closed_at IS NULL
    EXCEPT
    SELECT u, id FROM listed
),
closed AS (
    UPDATE credit_grants AS g
    SET closed_at = timestamptz 'epoch' + l.ts * interval '1 millisecond', remaining = 0,
        redis_version = l.ver
    FROM unlisted AS c JOIN latest AS l ON l.u = c.user_id
    WHERE g.user_id = c.user_id AND g.id = c.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins) AS inserted, (SELECT count(*) FROM moved) AS moved,
       (SELECT array_agg(u) FROM latest) AS users,
       (SELECT count(*) FROM kept) + (SELECT count(*) FROM closed) AS blocks,
       (SELECT array_agg(u) FROM regressed) AS regressed, (SELECT count(*) FROM settled) AS settled
"""

# A user's open credit blocks as hydrate.lua takes them (the cold path, in the transaction that
# read the user's row: both are at the same flushed version).
GRANTS_OPEN = """
SELECT user_id, id, kind, priority, expires_at, created_at, remaining, amount
FROM credit_grants
WHERE user_id = ANY($1::varchar[]) AND closed_at IS NULL
ORDER BY user_id, id
"""

# The event retries a request the ledger holds: its request id was booked less than the
# idempotency window (${window}, ms) before the event (Redis should still have remembered it:
# a failover or a loss took the record), or less than the retry horizon (${horizon}, ms) before
# it with the same type, amount, model and tokens (Redis's window had ended: the same body
# again is a retry, a different one a new request under a reused id).
_FORGOTTEN = """EXISTS (
    SELECT 1 FROM credit_transactions o
    WHERE o.user_id = e.u AND o.request_id = e.rid AND o.id <> e.tx
      AND (o.created_at > timestamptz 'epoch' + (e.ts - ${window}::bigint) * interval '1 ms'
           OR (o.created_at > timestamptz 'epoch' + (e.ts - ${horizon}::bigint) * interval '1 ms'
               AND o.transaction_type = e.t AND o.amount = e.amt::numeric / 1000000
               AND o.model IS NOT DISTINCT FROM NULLIF(e.model, '')
               AND o.input_tokens IS NOT DISTINCT FROM NULLIF(e.tin, '')::bigint
               AND o.output_tokens IS NOT DISTINCT FROM NULLIF(e.tout, '')::bigint))
)"""

# After LEDGER_APPLY_BATCH inserted fewer rows than the batch ($1, the same lines): the events
# whose transaction id the ledger does not hold reused a client's request id after Redis forgot
# it (idempotency TTL); Redis charged them as new requests, so they go in under a derived request
# id, unless they retry the first ($3 the idempotency window, $4 the retry horizon, in ms:
# _FORGOTTEN): see LEDGER_UNBOOKED.
# The others were replays. A system request id (sys:create, sys:reset:..., sys:tier:...) is
# never booked so: it is unique by construction, and a second one is a fault to look at (see
# LEDGER_UNBOOKED). Returns what was inserted.
LEDGER_INSERT_REUSED = f"""
WITH ins AS (
    {_LEDGER_ROW.format(request_id="$2 || tx::text")}
    FROM {_EVENTS}
    WHERE NOT EXISTS (SELECT 1 FROM credit_transactions c WHERE c.id = e.tx)
      AND rid NOT LIKE 'sys:%'
      AND NOT {_FORGOTTEN.format(window=3, horizon=4)}
    ON CONFLICT DO NOTHING
    RETURNING user_id, id
)
SELECT user_id, id FROM ins
"""

# Events of the batch ($1) the ledger still lacks after both inserts: system request ids seen
# twice, which the flusher refuses (to the dead-letter stream), never books silently; and
# (forgotten) retries of requests the ledger holds ($2 the idempotency window, $3 the retry
# horizon, in ms: _FORGOTTEN), which Redis charged again because it had lost their record (a
# failover, Redis emptied) or its window had ended: the client retried one request, so it is
# charged once, the user resynced (gateway/flusher/resync.py).
LEDGER_UNBOOKED = f"""
SELECT u AS user_id, rid,
       rid NOT LIKE 'sys:%' AND {_FORGOTTEN.format(window=2, horizon=3)} AS forgotten
FROM {_EVENTS}
WHERE NOT EXISTS (SELECT 1 FROM credit_transactions c WHERE c.id = e.tx)
"""
