"""reconcile's statements (gateway/ops/reconcile.py): every user's books in one pass, and the
users only Redis holds. Imported by persistence/queries.py, so they are part of queries.ALL and
prepared on the migrated schema by the tests like every other."""

from __future__ import annotations

# Every user's books in one pass, streamed by `metering reconcile`: the row's balance and
# version, the ledger's sum (the total PostgreSQL keeps with the rows, migration 0015) and the
# open credit blocks ('id:micro' in no order: whoever compares them looks them up by id; an
# ORDER BY sorted each user's blocks, 30 % of the aggregate), in micro-credits; then
# the figures books.lua compares, as the one line it takes ('balance|version|blocks', '~' for
# none), and whether PostgreSQL's side alone is wrong (the ledger or the blocks do not sum to
# the balance, or it is negative), so Python looks no further at a user whose books agree.
# Of the users, part $2 of $1 (by a hash of the id): reconcile reads the parts side by side, on
# as many connections, so that PostgreSQL's aggregate uses more than one core.
USERS_BOOKS = """
SELECT b.*, b.balance || '|' || b.version || '|' || COALESCE(b.blocks, '~') AS line,
       (b.ledger <> b.balance OR b.balance < 0
        OR (b.blocks IS NOT NULL AND b.blocks_sum IS DISTINCT FROM b.balance)) AS odd
FROM (SELECT u.user_id, (u.credits_remaining * 1000000)::bigint AS balance,
             u.redis_version AS version, (COALESCE(l.total, 0) * 1000000)::bigint AS ledger,
             g.blocks, g.blocks_sum
      FROM user_credits AS u
      LEFT JOIN ledger_totals AS l USING (user_id)
      LEFT JOIN (SELECT user_id, string_agg(id || ':' || (remaining * 1000000)::bigint, ',')
                            AS blocks,
                        (sum(remaining) * 1000000)::bigint AS blocks_sum
                 FROM credit_grants
                 WHERE closed_at IS NULL AND (hashtext(user_id) & 2147483647) % $1 = $2
                 GROUP BY user_id) AS g
          USING (user_id)
      WHERE (hashtext(u.user_id) & 2147483647) % $1 = $2) AS b
"""

# Of these user ids ($1), those PostgreSQL has no row for (reconcile's users only Redis holds:
# almost always none, so almost nothing comes back).
USERS_UNKNOWN = """
SELECT u FROM unnest($1::varchar[]) AS u
WHERE NOT EXISTS (SELECT 1 FROM user_credits WHERE user_id = u)
"""
