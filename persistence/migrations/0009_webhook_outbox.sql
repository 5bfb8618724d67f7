-- Low-balance alerts waiting to be sent as webhooks (and those sent). The flusher queues them in
-- the transaction that moves a user's balance, at most one per user, period and kind; the sender
-- posts them, retrying with backoff, and marks them delivered or, after its last try, failed.
CREATE TABLE webhook_outbox (
    id              bigserial PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    user_id         varchar(255) NOT NULL,
    period_start    timestamptz NOT NULL,
    kind            varchar(20) NOT NULL,  -- used_80, used_95, ..., depleted
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    failed_at       timestamptz,
    last_error      text,
    UNIQUE (user_id, period_start, kind)
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
