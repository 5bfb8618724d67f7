-- A refund points at the debit it returns, so refunds of one debit can be summed.
ALTER TABLE credit_transactions ADD COLUMN refund_of uuid REFERENCES credit_transactions (id);
CREATE INDEX credit_transactions_refund_of ON credit_transactions (refund_of)
    WHERE refund_of IS NOT NULL;
