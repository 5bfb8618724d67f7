-- A redemption records the transaction id of its grant and whether the grant is known to have
-- reached Redis, so a retry after the idempotency window can never grant twice: a granted
-- redemption is answered from here; a pending one is settled under its row lock by looking for
-- its transaction in the ledger once the user's shard is flushed. Rows from before were granted.
ALTER TABLE coupon_redemptions
    ADD COLUMN transaction_id uuid,
    ADD COLUMN granted boolean NOT NULL DEFAULT true;
