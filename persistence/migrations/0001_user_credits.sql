-- The original system's table, column for column. Never edit an applied migration: add a new one.
CREATE TABLE user_credits (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           varchar(255) NOT NULL UNIQUE,
    credits_remaining numeric(12,6) NOT NULL DEFAULT 0,
    credits_allocated numeric(12,6) NOT NULL DEFAULT 0,
    tier              varchar(50) NOT NULL DEFAULT 'free',
    monthly_cap       numeric(12,6),
    last_reset        timestamptz DEFAULT now(),
    created_at        timestamptz DEFAULT now(),
    updated_at        timestamptz DEFAULT now()
);
