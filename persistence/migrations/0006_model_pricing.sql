-- Per-model prices in credits per million tokens, for debits priced by the gateway.
CREATE TABLE model_pricing (
    model              varchar(255) PRIMARY KEY,
    input_per_million  numeric(18,6) NOT NULL CHECK (input_per_million >= 0),
    output_per_million numeric(18,6) NOT NULL CHECK (output_per_million >= 0),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
