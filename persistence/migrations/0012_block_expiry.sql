-- Credit blocks expire (docs/credit-blocks.md): a block past its expires_at closes and its
-- remainder leaves the balance as an 'expiry' ledger entry (its draws: the blocks and what each
-- lost). Each block also keeps all that was put in it (amount), for GET .../grants; rows from
-- before this migration take their remainder as the best known.
ALTER TABLE credit_transactions DROP CONSTRAINT credit_transactions_transaction_type_check;
ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_transaction_type_check
    CHECK (transaction_type IN ('usage', 'purchase', 'bonus', 'adjustment', 'refund',
                                'allocation', 'monthly_reset', 'expiry'));

ALTER TABLE credit_grants ADD COLUMN amount numeric(12, 6) CHECK (amount >= 0);
UPDATE credit_grants SET amount = remaining WHERE closed_at IS NULL;

-- the renewal cron's search for idle users with blocks due to expire
CREATE INDEX credit_grants_expiring ON credit_grants (expires_at, user_id)
    WHERE closed_at IS NULL AND expires_at IS NOT NULL;

-- a coupon may give credits that expire some days after each redemption (none: never)
ALTER TABLE coupons ADD COLUMN credits_expire_after_days integer
    CHECK (credits_expire_after_days > 0);

-- credits.expiring webhooks are keyed by their block: 'expiring:' and the block's id
ALTER TABLE webhook_outbox ALTER COLUMN kind TYPE varchar(300);
