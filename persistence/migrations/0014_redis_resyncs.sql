-- Resyncs (docs/reliability.md, "Failover"): when Redis fails over and the promoted replica
-- lacks changes the flusher had already booked, the user's next events carry versions that
-- PostgreSQL has passed. The flusher then gives Redis the difference (the ledger's sum less
-- Redis's balance at the same event) in one 'resync' event whose version, the fence, is above
-- both; until that event is flushed, the user's older events go into the ledger without moving
-- the user's row. One row per resync: what it corrected, and when its event was booked.
CREATE TABLE redis_resyncs (
    user_id varchar(255) NOT NULL,
    fence bigint NOT NULL,
    delta numeric(20, 6) NOT NULL,
    after_entry text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz,
    PRIMARY KEY (user_id, fence)
);
CREATE INDEX redis_resyncs_open ON redis_resyncs (user_id) WHERE settled_at IS NULL;

ALTER TABLE credit_transactions DROP CONSTRAINT credit_transactions_transaction_type_check;
ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_transaction_type_check
    CHECK (transaction_type IN ('usage', 'purchase', 'bonus', 'adjustment', 'refund',
                                'allocation', 'monthly_reset', 'expiry', 'resync'));
