-- Who did what to whom: every admin action (grants, tier changes, resets, refunds, pricing,
-- coupons, API keys), with the acting key's name. Credit actions arrive with their ledger event
-- (id = the transaction id, so a replayed flush writes each once).
CREATE TABLE audit_log (
    id         uuid PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      varchar(100) NOT NULL,
    action     varchar(50) NOT NULL,
    user_id    varchar(255),
    target     text,
    amount     numeric(12,6),
    request_id varchar(128),
    details    jsonb
);
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_user ON audit_log (user_id, at DESC, id DESC);
CREATE INDEX audit_log_action ON audit_log (action, at DESC, id DESC);
