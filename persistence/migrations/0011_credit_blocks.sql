-- Credit blocks (docs/credit-blocks.md): a user's balance is the sum of its open blocks, each
-- with its kind, priority and (later) expiry; spending draws them in order, and a renewal closes
-- only the allocation block. The flusher keeps these rows equal to the newest blocks Redis
-- reported for the user (under the same version guard as user_credits), and each charge's
-- ledger row records the blocks it drew from. Existing users get the allocation they have left (up to their balance) as the
-- allocation block and the rest of their balance as a purchase block without expiry.
CREATE TABLE credit_grants (
    user_id varchar(255) NOT NULL,
    id text NOT NULL,
    kind varchar(20) NOT NULL
        CHECK (kind IN ('allocation', 'rollover', 'bonus', 'adjustment', 'purchase')),
    priority smallint NOT NULL CHECK (priority BETWEEN 0 AND 100),
    expires_at timestamptz,
    created_at timestamptz NOT NULL,
    remaining numeric(12, 6) NOT NULL CHECK (remaining >= 0),
    closed_at timestamptz,
    redis_version bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX credit_grants_open ON credit_grants (user_id) WHERE closed_at IS NULL;

-- the blocks each charge drew from, 'grant_id:micro' joined by ',' (NULL for other entries)
ALTER TABLE credit_transactions ADD COLUMN draws text;

INSERT INTO credit_grants (user_id, id, kind, priority, created_at, remaining, redis_version)
SELECT user_id, 'a-migrated', 'allocation', 10, now(),
       LEAST(credits_remaining, credits_allocated), redis_version
FROM user_credits;

INSERT INTO credit_grants (user_id, id, kind, priority, created_at, remaining, redis_version)
SELECT user_id, 'p-migrated', 'purchase', 30, now(),
       credits_remaining - LEAST(credits_remaining, credits_allocated), redis_version
FROM user_credits
WHERE credits_remaining > credits_allocated;
