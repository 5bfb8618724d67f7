"""Coupon request and response bodies (msgspec): a coupon grants a bonus credit block to each
user redeeming it (gateway/credits/coupons.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from msgspec import Meta, Struct

from gateway.credits.money import parse_amount
from gateway.credits.schemas import (
    AmountIn,
    RequestId,
    UserId,
    check_expiry,
    check_request_id,
)

COUPON_CODE_PATTERN = r"^[A-Za-z0-9_-]+\Z"
CouponCode = Annotated[
    str,
    Meta(
        min_length=3,
        max_length=64,
        pattern=COUPON_CODE_PATTERN,
        description="3 to 64 letters, digits, '_' or '-'",
    ),
]


class CouponRequest(Struct, forbid_unknown_fields=True):
    credits: AmountIn
    code: CouponCode | None = None  # generated when absent
    max_uses: Annotated[int, Meta(ge=1, le=10**9)] | None = None
    expires_at: datetime | None = None
    # the credits a redemption grants expire this many days after it (none: never)
    credits_expire_after_days: Annotated[int, Meta(ge=1, le=36_500)] | None = None

    def __post_init__(self) -> None:
        parse_amount(self.credits, field="credits")
        check_expiry(self.expires_at)


class Coupon(Struct):
    code: str
    credits: str
    max_uses: int | None
    uses: int
    expires_at: str | None
    active: bool
    created_at: str
    credits_expire_after_days: int | None = None


class CouponCheck(Struct):
    code: str
    valid: bool
    reason: str | None
    credits: str | None
    remaining_uses: int | None
    expires_at: str | None


class RedeemRequest(Struct, forbid_unknown_fields=True):
    user_id: UserId
    request_id: RequestId

    def __post_init__(self) -> None:
        check_request_id(self.request_id)


class RedeemResult(Struct):
    code: str
    user_id: str
    transaction_id: str
    granted: str
    credits_remaining: str
    replayed: bool
