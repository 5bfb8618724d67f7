"""The renewal cron's pages (gateway/credits/renewal.py): users to renew, or holding a block
past its expiry, each with its row already written as renew_many.lua loads it, so the cron's
Python does nothing per user but name its keys. Imported by persistence/queries.py, so they
are part of queries.ALL and prepared on the migrated schema by the tests like every other.

A row's text is hydrate.lua's arguments as CreditService.hydrate_args and block_args make them
(tests/test_renewal.py holds the two to the same Redis state), joined by the unit separator:
balance, allocation, tier, cap ('' none), reset (ISO, as Python's isoformat writes it), version,
spent (micro-credits), the last renewal (epoch ms, as clock.epoch_ms: a float's floor), the
open blocks (block_text.blocks_text: spending order, ids compared bytewise; '' none) and their
earliest expiry, then the user id, last so that it may hold any character.
"""

from __future__ import annotations

# epoch ms as Python's int(datetime.timestamp() * 1000): the float, not the exact numeric
_MS = "floor(extract(epoch FROM {0})::float8 * 1000)::bigint"

_ROW = f"""
SELECT p.user_id, concat_ws(E'\\x1f',
    (p.credits_remaining * 1000000)::bigint, (p.credits_allocated * 1000000)::bigint, p.tier,
    COALESCE((p.monthly_cap * 1000000)::bigint::text, ''),
    to_char(p.reset AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
      || CASE WHEN to_char(p.reset, 'US') = '000000' THEN ''
              ELSE '.' || to_char(p.reset, 'US') END || '+00:00',
    p.redis_version, (p.period_spent * 1000000)::bigint, {_MS.format("p.reset")},
    COALESCE(b.blks, ''), COALESCE(b.nexp, 0), p.user_id)
FROM page p
LEFT JOIN LATERAL (
    SELECT string_agg(
               concat_ws(':', (g.remaining * 1000000)::bigint, g.id, g.kind, g.priority, t.exp,
                         t.created, (COALESCE(g.amount, g.remaining) * 1000000)::bigint),
               ',' ORDER BY g.priority, t.exp = 0, t.exp, t.created, g.id COLLATE "C") AS blks,
           COALESCE(min(t.exp) FILTER (WHERE t.exp > 0), 0) AS nexp
    FROM credit_grants g,
         LATERAL (SELECT COALESCE({_MS.format("g.expires_at")}, 0) AS exp,
                         {_MS.format("g.created_at")} AS created) t
    WHERE g.user_id = p.user_id AND g.closed_at IS NULL
) b ON true
ORDER BY p.user_id
"""

_PAGE = """
WITH page AS (
    SELECT user_id, credits_remaining, credits_allocated, tier, monthly_cap,
           COALESCE(last_reset, $4) AS reset, redis_version, period_spent
    FROM user_credits
    WHERE {where} AND user_id > $2
    ORDER BY user_id
    LIMIT $3
)"""

# $1 the current period's start: users whose last renewal is older; $2 after this user id,
# $3 at most this many, $4 the current period's start again (the reset of a row never renewed)
RENEW_PAGE_DUE = _PAGE.format(where="last_reset < $1") + _ROW

# $1 now: users with an open block expired at or before it (credit_grants_expiring finds
# them); $2, $3 as above, $4 the current period's start, for a row never renewed
RENEW_PAGE_EXPIRING = (
    _PAGE.format(
        where="user_id IN (SELECT user_id FROM credit_grants "
        "WHERE closed_at IS NULL AND expires_at <= $1 AND user_id > $2)"
    )
    + _ROW
)
