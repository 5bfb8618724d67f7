-- Usage summaries (docs/performance.md, "Cost as data grows"): per user, UTC hour and UTC day
-- (span), model and service (metadata.service), the debits ('usage' rows) the ledger holds,
-- kept by the flusher in the statement that inserts the ledger rows
-- (persistence/batch_queries.py), so a usage report sums days and hours, not rows: whole days
-- from the days, the hours left at both ends from the hours, the rest from the rows.
-- Credits are positive here, as in the report; sums are exact. NULL model or service: the
-- debits that named none. The service can be long (metadata is up to 8 KB), so the key holds
-- its md5, which keeps the index row small.
CREATE TABLE usage_summaries (
    user_id       varchar(255) NOT NULL,
    span          text NOT NULL CHECK (span IN ('hour', 'day')),
    starts_at     timestamptz NOT NULL,
    model         varchar(255),
    service       text,
    requests      bigint NOT NULL,
    credits       numeric NOT NULL,
    input_tokens  bigint NOT NULL,
    output_tokens bigint NOT NULL
);
CREATE UNIQUE INDEX usage_summaries_key
    ON usage_summaries (user_id, span, starts_at, model, md5(service)) NULLS NOT DISTINCT;

-- what the ledger already holds
INSERT INTO usage_summaries (user_id, span, starts_at, model, service, requests, credits,
                             input_tokens, output_tokens)
SELECT user_id, span, date_trunc(span, created_at, 'UTC'), model, metadata->>'service',
       count(*), sum(-amount), COALESCE(sum(input_tokens), 0), COALESCE(sum(output_tokens), 0)
FROM credit_transactions, (VALUES ('hour'), ('day')) AS s (span)
WHERE transaction_type = 'usage'
GROUP BY 1, 2, 3, 4, 5;
