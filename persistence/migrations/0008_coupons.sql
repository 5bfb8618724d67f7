-- Coupons, as the original system had, and who redeemed them (once per user).
CREATE TABLE coupons (
    code       varchar(64) PRIMARY KEY,
    credits    numeric(12,6) NOT NULL CHECK (credits > 0),
    max_uses   integer CHECK (max_uses > 0),
    uses       integer NOT NULL DEFAULT 0,
    expires_at timestamptz,
    active     boolean NOT NULL DEFAULT true,
    created_by varchar(100) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (max_uses IS NULL OR uses <= max_uses)
);

CREATE TABLE coupon_redemptions (
    code       varchar(64) NOT NULL REFERENCES coupons (code),
    user_id    varchar(255) NOT NULL,
    request_id varchar(128) NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (code, user_id)
);
