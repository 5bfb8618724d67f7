-- Prices as providers bill: rates for cached input, cache writes and reasoning (NULL: the
-- input rate for cached and cache-write tokens, the output rate for reasoning), and the
-- ledger's count of each for a priced call (NULL: not reported).
ALTER TABLE model_pricing
    ADD COLUMN cached_input_per_million numeric(18,6) CHECK (cached_input_per_million >= 0),
    ADD COLUMN cache_write_per_million  numeric(18,6) CHECK (cache_write_per_million >= 0),
    ADD COLUMN reasoning_per_million    numeric(18,6) CHECK (reasoning_per_million >= 0);

ALTER TABLE credit_transactions
    ADD COLUMN cached_input_tokens bigint,
    ADD COLUMN cache_write_tokens  bigint,
    ADD COLUMN reasoning_tokens    bigint;
