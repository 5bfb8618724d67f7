"""The ledger summaries' statements (migration 0015: kept by triggers on the ledger): a user's
debits in a window from the usage summaries and the ledger's rows at the window's ends; and the
deep checks that the usage summaries and the ledger totals equal the ledger's rows. Imported by
persistence/queries.py, so they are part of queries.ALL and prepared by the tests."""

from __future__ import annotations

# Usage (debits) of a user in [$2, $7), grouped three ways. Credits charged are positive here.
# $2 <= $3 <= $4 <= $5 <= $6 <= $7 (persistence/history.py, report_spans): the whole UTC days
# [$4, $5) come from the day summaries, the whole hours left at both ends [$3, $4) and [$5, $6)
# from the hour summaries, the rest [$2, $3) and [$6, $7) (under an hour each) from the ledger's
# rows: the cost grows with days x groups (plus at most 46 hours x groups), not with rows.
_USAGE = """
WITH parts AS (
    SELECT {summary_key} AS key, requests, credits, input_tokens, output_tokens
    FROM usage_summaries
    WHERE user_id = $1 AND requests <> 0 AND (span = 'day' AND starts_at >= $4 AND starts_at < $5
                            OR span = 'hour' AND (starts_at >= $3 AND starts_at < $4
                                                  OR starts_at >= $5 AND starts_at < $6))
    UNION ALL
    SELECT {row_key}, 1, -amount, COALESCE(input_tokens, 0), COALESCE(output_tokens, 0)
    FROM credit_transactions
    WHERE user_id = $1 AND transaction_type = 'usage'
      AND (created_at >= $2 AND created_at < $3 OR created_at >= $6 AND created_at < $7)
)
SELECT {outer_key} AS key, sum(requests)::bigint AS requests,
       COALESCE(sum(credits), 0) AS credits, sum(input_tokens)::bigint AS input_tokens,
       sum(output_tokens)::bigint AS output_tokens
FROM parts GROUP BY key ORDER BY 1
"""
# NULL key (null in JSON, listed last): debits that named no model / no service. Days are
# grouped as dates and named once per group.
USAGE_BY_MODEL = _USAGE.format(summary_key="model", row_key="model", outer_key="key")
USAGE_BY_SERVICE = _USAGE.format(
    summary_key="service", row_key="metadata->>'service'", outer_key="key"
)
USAGE_BY_DAY = _USAGE.format(
    summary_key="(starts_at AT TIME ZONE 'UTC')::date",
    row_key="(created_at AT TIME ZONE 'UTC')::date",
    outer_key="to_char(key, 'YYYY-MM-DD')",
)

# The summaries that differ from the ledger's 'usage' rows (missing, extra or with other sums),
# both ways, at most $1 of them: what the triggers kept must be what the ledger holds. A row at
# zero requests (its ledger rows deleted) is no row.
_LEDGER_SPANS = """
SELECT user_id, span, date_trunc(span, created_at, 'UTC') AS starts_at, model,
       metadata->>'service' AS service, count(*) AS requests, sum(-amount) AS credits,
       COALESCE(sum(input_tokens), 0) AS input_tokens,
       COALESCE(sum(output_tokens), 0) AS output_tokens
FROM credit_transactions, (VALUES ('hour'), ('day')) AS s (span)
WHERE transaction_type = 'usage' GROUP BY 1, 2, 3, 4, 5
"""
_SUMMARIES = """
SELECT user_id, span, starts_at, model, service, requests, credits, input_tokens, output_tokens
FROM usage_summaries WHERE requests <> 0
"""
USAGE_SUMMARY_DRIFT = f"""
(SELECT 'ledger' AS side, * FROM ({_LEDGER_SPANS} EXCEPT {_SUMMARIES}) AS l
 UNION ALL
 SELECT 'summary', * FROM ({_SUMMARIES} EXCEPT {_LEDGER_SPANS}) AS s)
ORDER BY user_id, span, starts_at, side LIMIT $1
"""

# The ledger totals that differ from the ledger's rows, both ways, at most $1 of them.
_LEDGER_USERS = """
SELECT user_id, sum(amount) AS total, count(*) AS entries FROM credit_transactions GROUP BY 1
"""
_TOTALS = "SELECT user_id, total, entries FROM ledger_totals WHERE entries <> 0"
LEDGER_TOTALS_DRIFT = f"""
(SELECT 'ledger' AS side, * FROM ({_LEDGER_USERS} EXCEPT {_TOTALS}) AS l
 UNION ALL
 SELECT 'total', * FROM ({_TOTALS} EXCEPT {_LEDGER_USERS}) AS s)
ORDER BY user_id, side LIMIT $1
"""
