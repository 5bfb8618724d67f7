"""Every SQL statement the code runs (the flush batch's in persistence/batch_queries.py, the
resyncs' in persistence/resync_queries.py, the summaries' in persistence/summary_queries.py,
the renewal cron's in persistence/renewal_queries.py, reconcile's in
persistence/books_queries.py, imported here). Nothing else in the code base holds SQL.

The test suite prepares each statement in ``ALL`` on a database migrated from scratch, so a
column that does not exist, a wrong type or a column/value count mismatch fails CI.
All statements are parameterized; no value is ever formatted into SQL text.
"""

from __future__ import annotations

from persistence.batch_queries import (  # the flush batch's statements, part of ALL
    GRANTS_OPEN as GRANTS_OPEN,
    LEDGER_APPLY_BATCH as LEDGER_APPLY_BATCH,
    LEDGER_INSERT_REUSED as LEDGER_INSERT_REUSED,
    LEDGER_UNBOOKED as LEDGER_UNBOOKED,
)
from persistence.books_queries import (  # reconcile's pass over every user
    USERS_BOOKS as USERS_BOOKS,
    USERS_UNKNOWN as USERS_UNKNOWN,
)
from persistence.renewal_queries import (  # the renewal cron's pages
    RENEW_PAGE_DUE as RENEW_PAGE_DUE,
    RENEW_PAGE_EXPIRING as RENEW_PAGE_EXPIRING,
)
from persistence.resync_queries import (
    FLUSH_LOCK_WAIT as FLUSH_LOCK_WAIT,
    RESYNC_RECORD as RESYNC_RECORD,
    USER_GET_BALANCE as USER_GET_BALANCE,
    USER_SET_BALANCE as USER_SET_BALANCE,
    USER_VERSION as USER_VERSION,
)
from persistence.summary_queries import (  # usage reports, the summaries' checks
    LEDGER_TOTALS_DRIFT as LEDGER_TOTALS_DRIFT,
    USAGE_BY_DAY as USAGE_BY_DAY,
    USAGE_BY_MODEL as USAGE_BY_MODEL,
    USAGE_BY_SERVICE as USAGE_BY_SERVICE,
    USAGE_SUMMARY_DRIFT as USAGE_SUMMARY_DRIFT,
)

USER_COLUMNS = (
    "user_id, credits_remaining, credits_allocated, tier, monthly_cap, last_reset, "
    "created_at, updated_at, redis_version, period_spent"
)

# The cold path's creation, for many users in one statement (gateway/credits/cold.py):
# $1 user ids (sorted: concurrent statements wait for each other's rows instead of deadlocking),
# $2 allocation, $3 tier, $4 monthly_cap, $5 each user's last_reset (the start of its current
# period), $6 each user's now (the scripts' clock, so its first ledger entry sits on the same
# timeline). Creates each user that does not exist with the tier's allocation, its 'allocation'
# ledger entry and its allocation credit block, and returns the rows it created and the rows that
# existed, untouched (``created`` tells which). A user created by a concurrent statement that
# committed after this one began is in neither: the caller asks again.
USERS_CREATE = f"""
WITH want AS (
    SELECT * FROM unnest($1::varchar[], $5::timestamptz[], $6::timestamptz[])
        AS w (user_id, last_reset, at)
), ins AS (
    INSERT INTO user_credits (user_id, credits_remaining, credits_allocated, tier, monthly_cap,
                              last_reset, created_at, updated_at)
    SELECT user_id, $2, $2, $3, $4, last_reset, at, at FROM want ORDER BY user_id
    ON CONFLICT (user_id) DO NOTHING
    RETURNING {USER_COLUMNS}
), ledger AS (
    INSERT INTO credit_transactions (id, user_id, transaction_type, amount, balance_after,
                                     request_id, redis_version, created_at)
    SELECT gen_random_uuid(), user_id, 'allocation', credits_remaining, credits_remaining,
           'sys:create', 0, created_at
    FROM ins
), block AS (
    INSERT INTO credit_grants (user_id, id, kind, priority, created_at, remaining)
    SELECT user_id, 'a-create', 'allocation', 10, created_at, credits_remaining FROM ins
)
SELECT {USER_COLUMNS}, true AS created FROM ins
UNION ALL
SELECT {USER_COLUMNS}, false AS created FROM user_credits WHERE user_id = ANY($1::varchar[])
"""

USER_GET = f"SELECT {USER_COLUMNS} FROM user_credits WHERE user_id = $1"


# A debit and what its flushed refunds returned so far (refunds are positive amounts).
# A debit to refund: its amount, time, the refunds of it flushed so far, the blocks it drew
# from ('id:micro' in drawing order) and those blocks as credit_grants holds them
# ('id:kind:priority:expires_ms:created_ms:granted_micro', for lib.lua credit_back).
DEBIT_FOR_REFUND = """
SELECT d.user_id, d.transaction_type, d.amount, d.created_at, d.draws,
       (SELECT COALESCE(sum(r.amount), 0) FROM credit_transactions r WHERE r.refund_of = d.id)
           AS refunded,
       (SELECT string_agg(concat_ws(':', g.id, g.kind, g.priority,
                                    COALESCE(floor(extract(epoch FROM g.expires_at) * 1000), 0),
                                    floor(extract(epoch FROM g.created_at) * 1000),
                                    COALESCE(g.amount * 1000000, 0)::bigint), ',')
        FROM credit_grants g
        WHERE g.user_id = d.user_id
          AND g.id IN (SELECT split_part(x, ':', 1) FROM string_to_table(d.draws, ',') AS x))
           AS blocks
FROM credit_transactions d
WHERE d.id = $1
"""

# A user's blocks that are closed in PostgreSQL or absent from $2 (the ids Redis holds open:
# closed there, not flushed yet), newest first, for GET .../grants?include=closed.
GRANTS_CLOSED = """
SELECT user_id, id, kind, priority, expires_at, created_at, remaining, amount, closed_at
FROM credit_grants
WHERE user_id = $1 AND (closed_at IS NOT NULL OR NOT id = ANY($2::text[]))
ORDER BY closed_at DESC NULLS FIRST, created_at DESC, id
LIMIT $3
"""

# Serializes flushers per stream: a flusher takes the stream's flusher lock without waiting
# (other gateway processes skip the shard while one holds it), with a bound ($2, ms) on any
# lock wait in its transaction, then the stream's lock (FLUSH_LOCK_WAIT), waiting for the cold
# paths loading users of the shard to commit (they hold it shared, a few ms each). With only a
# try on the stream's lock, cold paths arriving back to back (a launch, a Redis restart) kept
# every shard's lock taken at the flusher's tries, and the flush fell 10 s behind under 2,000
# new users a second.
FLUSHER_LOCK = """
SELECT set_config('lock_timeout', $2, true) IS NOT NULL
       AND pg_try_advisory_xact_lock(hashtext('flusher:' || $1))
"""

# The same lock, shared, waited for: a cold path loading users waits for a flush of their shards
# ($1, the shards' streams) under way to commit (several cold paths at once do not wait for each
# other). Taken in one order, one statement for all the shards.
FLUSH_WAIT = """
SELECT count(pg_advisory_xact_lock_shared(hashtext(s)))
FROM (SELECT DISTINCT s FROM unnest($1::text[]) AS s ORDER BY s) AS o
"""

# Audit rows of credit actions, from flushed events; the id is the transaction id.
AUDIT_INSERT_BATCH = """
INSERT INTO audit_log (id, at, actor, action, user_id, target, amount, request_id, details)
SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::varchar[], $4::varchar[],
                     $5::varchar[], $6::text[], $7::numeric[], $8::varchar[], $9::jsonb[])
ON CONFLICT (id) DO NOTHING
"""

# An operator's action from the command line (a dead letter replayed or dropped, a drifted
# user repaired).
AUDIT_OPERATOR = """
INSERT INTO audit_log (id, actor, action, user_id, target, amount, request_id, details)
VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $6, $7::jsonb)
"""

# Newest first, keyset-paginated on (at, id) before ($3, $4); $1 user and $2 action optional.
AUDIT_PAGE = """
SELECT id, at, actor, action, user_id, target, amount, request_id, details FROM audit_log
WHERE ($1::varchar IS NULL OR user_id = $1) AND ($2::varchar IS NULL OR action = $2)
  AND (at, id) < ($3, $4)
ORDER BY at DESC, id DESC
LIMIT $5
"""

# The users who spent most in their current period (as flushed), for ops views.
TOP_SPENDERS = """
SELECT user_id, tier, period_spent, credits_remaining FROM user_credits
WHERE period_spent > 0 ORDER BY period_spent DESC, user_id LIMIT $1
"""

LEDGER_SUM = """
SELECT COALESCE(sum(amount), 0) AS total, count(*) AS n
FROM credit_transactions WHERE user_id = $1
"""

LEDGER_COLUMNS = (
    "id, transaction_type, amount, balance_after, request_id, model, input_tokens, "
    "output_tokens, metadata, refund_of, created_at, cached_input_tokens, cache_write_tokens, "
    "reasoning_tokens"
)

# A user's ledger, newest first, keyset-paginated on (created_at, id) before ($2, $3).
LEDGER_PAGE = f"""
SELECT {LEDGER_COLUMNS} FROM credit_transactions
WHERE user_id = $1 AND (created_at, id) < ($2, $3)
ORDER BY created_at DESC, id DESC
LIMIT $4
"""

_PRICE_COLUMNS = """model, input_per_million, output_per_million, cached_input_per_million,
       cache_write_per_million, reasoning_per_million, updated_at"""

PRICING_UPSERT = f"""
WITH p AS (
    INSERT INTO model_pricing (model, input_per_million, output_per_million,
                               cached_input_per_million, cache_write_per_million,
                               reasoning_per_million)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (model) DO UPDATE
    SET input_per_million = EXCLUDED.input_per_million,
        output_per_million = EXCLUDED.output_per_million,
        cached_input_per_million = EXCLUDED.cached_input_per_million,
        cache_write_per_million = EXCLUDED.cache_write_per_million,
        reasoning_per_million = EXCLUDED.reasoning_per_million,
        updated_at = now()
    RETURNING {_PRICE_COLUMNS}
), a AS (
    INSERT INTO audit_log (id, actor, action, target, details)
    SELECT gen_random_uuid(), $7, 'pricing.set', model,
           jsonb_strip_nulls(jsonb_build_object(
               'input_per_million', input_per_million,
               'output_per_million', output_per_million,
               'cached_input_per_million', cached_input_per_million,
               'cache_write_per_million', cache_write_per_million,
               'reasoning_per_million', reasoning_per_million))
    FROM p
)
SELECT {_PRICE_COLUMNS} FROM p
"""

PRICING_ALL = f"SELECT {_PRICE_COLUMNS} FROM model_pricing ORDER BY model"

# Prices for models not priced yet, in one statement (the others keep the operator's prices).
PRICING_IMPORT = """
WITH p AS (
    INSERT INTO model_pricing (model, input_per_million, output_per_million,
                               cached_input_per_million, cache_write_per_million,
                               reasoning_per_million)
    SELECT * FROM unnest($1::text[], $2::numeric[], $3::numeric[], $4::numeric[],
                         $5::numeric[], $6::numeric[])
    ON CONFLICT (model) DO NOTHING
    RETURNING model, input_per_million, output_per_million
), a AS (
    INSERT INTO audit_log (id, actor, action, target, details)
    SELECT gen_random_uuid(), $7, 'pricing.import', model,
           jsonb_build_object('source', $8::text, 'input_per_million', input_per_million,
                              'output_per_million', output_per_million)
    FROM p
)
SELECT count(*) FROM p
"""

# $4 is the acting key's name: the audit row is written by the same statement.
COUPON_COLUMNS = (
    "code, credits, max_uses, uses, expires_at, active, created_at, credits_expire_after_days"
)

# $6 is the acting key's name, audited by the same statement, on PostgreSQL's clock like every
# other admin action written here ($5, the gateway's time, dates the coupon).
COUPON_INSERT = f"""
WITH c AS (
    INSERT INTO coupons (code, credits, max_uses, expires_at, created_by, created_at,
                         credits_expire_after_days)
    VALUES ($1, $2, $3, $4, $6, $5, $7)
    ON CONFLICT (code) DO NOTHING
    RETURNING {COUPON_COLUMNS}
), a AS (
    INSERT INTO audit_log (id, actor, action, target, amount, details)
    SELECT gen_random_uuid(), $6, 'coupon.create', code, credits,
           jsonb_build_object('max_uses', max_uses, 'expires_at', expires_at,
                              'credits_expire_after_days', credits_expire_after_days)
    FROM c
)
SELECT {COUPON_COLUMNS} FROM c
"""

COUPON_GET = f"SELECT {COUPON_COLUMNS} FROM coupons WHERE code = $1"

COUPON_CREDITS = "SELECT credits FROM coupons WHERE code = $1"

COUPON_LIST = f"SELECT {COUPON_COLUMNS} FROM coupons ORDER BY created_at DESC, code LIMIT $1"

COUPON_DEACTIVATE = f"""
WITH c AS (
    UPDATE coupons SET active = false WHERE code = $1 AND active RETURNING {COUPON_COLUMNS}
), a AS (
    INSERT INTO audit_log (id, actor, action, target)
    SELECT gen_random_uuid(), $2, 'coupon.deactivate', code FROM c
)
SELECT {COUPON_COLUMNS} FROM c
"""

# Take one use if the coupon is usable at $2 (row lock: max_uses holds under concurrency).
COUPON_TAKE_USE = """
UPDATE coupons SET uses = uses + 1
WHERE code = $1 AND active AND (expires_at IS NULL OR expires_at > $2)
  AND (max_uses IS NULL OR uses < max_uses)
RETURNING credits
"""

REDEMPTION_GET = """
SELECT request_id, transaction_id, granted FROM coupon_redemptions WHERE code = $1 AND user_id = $2
"""

# A new redemption, its grant not yet made ($5 the grant's transaction id).
REDEMPTION_INSERT = """
INSERT INTO coupon_redemptions (code, user_id, request_id, at, transaction_id, granted)
VALUES ($1, $2, $3, $4, $5, false)
ON CONFLICT (code, user_id) DO NOTHING
RETURNING request_id
"""

# The redemption's row, locked until the end of the transaction (its grant is settled once).
REDEMPTION_LOCK = """
SELECT granted FROM coupon_redemptions WHERE code = $1 AND user_id = $2 FOR UPDATE
"""

REDEMPTION_GRANTED = """
UPDATE coupon_redemptions SET granted = true WHERE code = $1 AND user_id = $2
"""

# A redemption whose grant Redis refused (its request_id was taken by another request): the row
# goes and the use is given back, in the transaction that holds the row's lock.
REDEMPTION_UNDO = """
WITH d AS (
    DELETE FROM coupon_redemptions WHERE code = $1 AND user_id = $2 AND NOT granted
    RETURNING code
)
UPDATE coupons SET uses = uses - 1 WHERE code IN (SELECT code FROM d)
"""

LEDGER_HAS = "SELECT EXISTS (SELECT 1 FROM credit_transactions WHERE id = $1)"

API_KEY_INSERT = """
WITH k AS (
    INSERT INTO api_keys (name, key_hash, scopes) VALUES ($1, $2, $3)
    ON CONFLICT (name) DO NOTHING
    RETURNING name, scopes, created_at
), a AS (
    INSERT INTO audit_log (id, actor, action, target, details)
    SELECT gen_random_uuid(), $4, 'key.create', name, jsonb_build_object('scopes', scopes) FROM k
)
SELECT name, scopes, created_at FROM k
"""

API_KEY_BY_HASH = """
SELECT name, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL
"""

API_KEY_LIST = "SELECT name, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at"

API_KEY_REVOKE = """
WITH k AS (
    UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING name
), a AS (
    INSERT INTO audit_log (id, actor, action, target)
    SELECT gen_random_uuid(), $2, 'key.revoke', name FROM k
)
SELECT name FROM k
"""

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
MIGRATIONS_LOCK = "SELECT pg_advisory_xact_lock(hashtext('metering:migrations'))"
MIGRATIONS_APPLIED = "SELECT version FROM schema_migrations ORDER BY version"
MIGRATION_RECORD = "INSERT INTO schema_migrations (version) VALUES ($1)"

DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = $1"

PING = "SELECT 1"

# Low-balance alerts for the users a flush just moved ($1): each (tier, kind, fraction) rule
# ($2, $3, $4) whose threshold the user's period has crossed queues one webhook; a fraction of
# the allocation spent this period, or 'depleted' (spent this period and nothing left). The
# unique (user_id, period_start, kind) makes it one per crossing per period, replays included.
WEBHOOK_QUEUE_ALERTS = """
INSERT INTO webhook_outbox (user_id, period_start, kind, payload)
SELECT u.user_id, u.last_reset, a.kind,
       jsonb_build_object(
           'type', 'credits.low_balance', 'kind', a.kind, 'user_id', u.user_id, 'tier', u.tier,
           'threshold', a.fraction::text, 'credits_remaining', u.credits_remaining::text,
           'credits_allocated', u.credits_allocated::text,
           'period_spent', u.period_spent::text, 'period_start', u.last_reset)
FROM user_credits u
JOIN unnest($2::varchar[], $3::varchar[], $4::numeric[]) AS a(tier, kind, fraction)
  ON a.tier = u.tier
WHERE u.user_id = ANY($1::varchar[])
  AND CASE WHEN a.kind = 'depleted'
           THEN u.period_spent > 0 AND u.credits_remaining <= 0
           ELSE u.credits_allocated > 0 AND u.period_spent >= u.credits_allocated * a.fraction
      END
ON CONFLICT (user_id, period_start, kind) DO NOTHING
"""

# credits.expiring: one webhook per open credit block that expires after $1 (now, on the
# scripts' clock) and at most $2 seconds later and holds at least $3 (micro); keyed by the
# block (its creation time as period_start, 'expiring:ID' as kind), so each is sent once.
WEBHOOK_QUEUE_EXPIRING = """
INSERT INTO webhook_outbox (user_id, period_start, kind, payload)
SELECT g.user_id, g.created_at, 'expiring:' || g.id,
       jsonb_build_object(
           'type', 'credits.expiring', 'user_id', g.user_id, 'grant_id', g.id,
           'kind', g.kind, 'remaining', g.remaining::text, 'expires_at', g.expires_at)
FROM credit_grants AS g
WHERE g.closed_at IS NULL AND g.expires_at > $1
  AND g.expires_at <= $1 + make_interval(secs => $2)
  AND g.remaining * 1000000 >= $3
ON CONFLICT (user_id, period_start, kind) DO NOTHING
"""

# Claim up to $1 due webhooks: leased for $2 seconds (another sender skips them meanwhile; a
# sender that dies mid-send leaves them to be sent again when the lease ends).
WEBHOOK_CLAIM = """
UPDATE webhook_outbox AS o
SET next_attempt_at = now() + make_interval(secs => $2), attempts = o.attempts + 1
FROM (
    SELECT id FROM webhook_outbox
    WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
) AS due
WHERE o.id = due.id
RETURNING o.id, o.event_id, o.payload::text AS payload, o.attempts
"""

WEBHOOK_DELIVERED = (
    "UPDATE webhook_outbox SET delivered_at = now(), last_error = NULL WHERE id = $1"
)

# A failed try: again after $2 seconds, or given up ($3 true) after the last try.
WEBHOOK_RETRY = """
UPDATE webhook_outbox
SET next_attempt_at = now() + make_interval(secs => $2), last_error = $4,
    failed_at = CASE WHEN $3 THEN now() END
WHERE id = $1
"""


ALL: dict[str, str] = {
    name: value
    for name, value in dict(globals()).items()
    if name.isupper()
    and not name.startswith("_")
    and isinstance(value, str)
    and not name.endswith("_COLUMNS")
}
