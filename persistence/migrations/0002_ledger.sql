-- The ledger, and the Redis version of the last event applied to each user's row, which makes
-- the write-behind idempotent: a replayed or out-of-order batch never moves a balance back.
ALTER TABLE user_credits ADD COLUMN redis_version bigint NOT NULL DEFAULT 0;

CREATE TABLE credit_transactions (
    id               uuid PRIMARY KEY,
    user_id          varchar(255) NOT NULL REFERENCES user_credits (user_id),
    transaction_type varchar(32) NOT NULL CHECK (transaction_type IN
                     ('usage', 'purchase', 'bonus', 'adjustment', 'refund', 'allocation',
                      'monthly_reset')),
    amount           numeric(12,6) NOT NULL,  -- signed: debits are negative
    balance_after    numeric(12,6) NOT NULL CHECK (balance_after >= 0),
    request_id       varchar(128) NOT NULL,
    model            varchar(255),
    input_tokens     bigint,
    output_tokens    bigint,
    metadata         jsonb,
    redis_version    bigint,
    created_at       timestamptz NOT NULL DEFAULT now(),
    flushed_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, request_id)
);
CREATE INDEX credit_transactions_user_time ON credit_transactions (user_id, created_at DESC);
