-- Summaries of the ledger, kept by PostgreSQL itself (docs/performance.md, "Cost as data
-- grows"): statement triggers on credit_transactions add what each statement inserts (and take
-- back what one deletes, both for an update), in that statement's transaction, whoever writes
-- the ledger: the flush batch, the cold path, an operator's import. One aggregate a statement.
--
-- usage_summaries: per user, UTC hour and UTC day (span), model and service (metadata.service),
-- the debits ('usage' rows), so a usage report sums days and hours, not rows: whole days from
-- the days, the hours left at both ends from the hours, the rest from the rows
-- (persistence/summary_queries.py). Credits are positive here, as in the report; sums are exact.
-- NULL model or service: the debits that named none. The service can be long (metadata is up
-- to 8 KB), so the key holds its md5 (16 bytes), which keeps the index row small. A row whose
-- ledger rows were all deleted stays, at zero requests.
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
    ON usage_summaries (user_id, span, starts_at, model, (md5(service)::uuid)) NULLS NOT DISTINCT;

-- ledger_totals: per user, the ledger's sum and number of entries, so `metering reconcile`
-- compares each balance with its ledger without summing the ledger (`reconcile --deep` checks
-- these totals and the usage summaries against the rows themselves).
CREATE TABLE ledger_totals (
    user_id varchar(255) PRIMARY KEY,
    total   numeric NOT NULL,
    entries bigint NOT NULL
);

-- The statement that adds the rows of `source` (a query of credit_transactions' columns plus
-- `sign`: 1 to add a row, -1 to take it back) to both summaries. The trigger runs it itself:
-- only there are the statement's transition tables (new_rows, old_rows) visible.
CREATE FUNCTION ledger_summaries_sql(source text) RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
    SELECT format($q$
        WITH c AS MATERIALIZED (%s),
        used AS (
            INSERT INTO usage_summaries AS h (user_id, span, starts_at, model, service,
                                              requests, credits, input_tokens, output_tokens)
            SELECT user_id, span, date_trunc(span, created_at, 'UTC'), model,
                   metadata->>'service', sum(sign), sum(-amount * sign),
                   COALESCE(sum(input_tokens * sign), 0), COALESCE(sum(output_tokens * sign), 0)
            FROM c, (VALUES ('hour'), ('day')) AS s (span)
            WHERE transaction_type = 'usage'
            GROUP BY 1, 2, 3, 4, 5
            ON CONFLICT (user_id, span, starts_at, model, (md5(service)::uuid)) DO UPDATE
            SET requests = h.requests + EXCLUDED.requests,
                credits = h.credits + EXCLUDED.credits,
                input_tokens = h.input_tokens + EXCLUDED.input_tokens,
                output_tokens = h.output_tokens + EXCLUDED.output_tokens
        )
        INSERT INTO ledger_totals AS t (user_id, total, entries)
        SELECT user_id, sum(amount * sign), sum(sign) FROM c GROUP BY user_id
        ON CONFLICT (user_id) DO UPDATE
        SET total = t.total + EXCLUDED.total, entries = t.entries + EXCLUDED.entries
    $q$, source)
$fn$;

CREATE FUNCTION ledger_summarize() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        EXECUTE ledger_summaries_sql('SELECT *, 1 AS sign FROM new_rows');
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE ledger_summaries_sql('SELECT *, -1 AS sign FROM old_rows');
    ELSE
        EXECUTE ledger_summaries_sql(
            'SELECT *, -1 AS sign FROM old_rows UNION ALL SELECT *, 1 FROM new_rows');
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER ledger_summarize_insert AFTER INSERT ON credit_transactions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ledger_summarize();
CREATE TRIGGER ledger_summarize_delete AFTER DELETE ON credit_transactions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION ledger_summarize();
CREATE TRIGGER ledger_summarize_update AFTER UPDATE ON credit_transactions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_summarize();

-- what the ledger already holds
DO $$ BEGIN
    EXECUTE ledger_summaries_sql('SELECT *, 1 AS sign FROM credit_transactions');
END $$;
