-- Spending in the current period (for monthly caps), flushed from Redis like the balance, so a
-- user rehydrated from PostgreSQL keeps its cap position.
ALTER TABLE user_credits ADD COLUMN period_spent numeric(12,6) NOT NULL DEFAULT 0;
CREATE INDEX user_credits_last_reset ON user_credits (last_reset);
