"""Coupons: created and accounted in PostgreSQL (max_uses and one redemption per user under a
row lock), redeemed as an idempotent 'bonus' grant in Redis. A redemption whose grant failed
(Redis down) completes when the client retries with the same request_id."""

from __future__ import annotations

import base64
import secrets

import msgspec

from gateway.errors import Conflict, IdempotencyConflict, NotFound
from gateway.money import fmt, parse_amount, to_decimal, to_micro
from gateway.schemas import (
    Coupon,
    CouponCheck,
    CouponRequest,
    RedeemRequest,
    RedeemResult,
    fingerprint,
)
from gateway.service import CreditService, applied
from persistence import coupons as db
from persistence.coupons import CouponRow


def _coupon(c: CouponRow) -> Coupon:
    return Coupon(
        code=c.code,
        credits=fmt(to_micro(c.credits)),
        max_uses=c.max_uses,
        uses=c.uses,
        expires_at=c.expires_at.isoformat() if c.expires_at else None,
        active=c.active,
        created_at=c.created_at.isoformat(),
    )


def new_code() -> str:
    return base64.b32encode(secrets.token_bytes(10)).decode().rstrip("=")


class CouponService:
    def __init__(self, credits: CreditService) -> None:
        self.credits = credits

    async def create(self, req: CouponRequest, actor: str) -> Coupon:
        code = req.code or new_code()
        row = await db.insert_coupon(
            self.credits.pool,
            code,
            to_decimal(parse_amount(req.credits, field="credits")),
            req.max_uses,
            req.expires_at,
            self.credits.clock(),
            actor,
        )
        if row is None:
            raise Conflict(f"a coupon with code {code!r} already exists")
        return _coupon(row)

    async def list(self, limit: int) -> list[Coupon]:
        return [_coupon(c) for c in await db.list_coupons(self.credits.pool, limit)]

    async def deactivate(self, code: str, actor: str) -> Coupon:
        row = await db.deactivate_coupon(self.credits.pool, code, actor)
        if row is None:
            raise NotFound(f"no active coupon {code!r}")
        return _coupon(row)

    async def check(self, code: str) -> CouponCheck:
        row = await db.get_coupon(self.credits.pool, code)
        if row is None:
            raise NotFound(f"no coupon {code!r}")
        reason = self._unusable(row)
        return CouponCheck(
            code=row.code,
            valid=reason is None,
            reason=reason,
            credits=fmt(to_micro(row.credits)),
            remaining_uses=None if row.max_uses is None else row.max_uses - row.uses,
            expires_at=row.expires_at.isoformat() if row.expires_at else None,
        )

    def _unusable(self, row: CouponRow) -> str | None:
        if not row.active:
            return "deactivated"
        if row.expires_at is not None and row.expires_at <= self.credits.clock():
            return "expired"
        if row.max_uses is not None and row.uses >= row.max_uses:
            return "used_up"
        return None

    async def redeem(self, code: str, req: RedeemRequest) -> RedeemResult:
        user, keys = req.user_id, self.credits.keys
        fp = fingerprint("coupon", code)
        seen = await self.credits.redis.get(keys.request(user, req.request_id))
        if seen is not None and str(seen).split("|", 1)[0] != fp:
            raise IdempotencyConflict(
                f"request_id {req.request_id!r} was already used for this user "
                "with a different body"
            )
        status, credits = await db.redeem_once(
            self.credits.pool, code, user, req.request_id, self.credits.clock()
        )
        if status == "taken":
            raise Conflict(f"user {user!r} has already redeemed coupon {code!r}")
        if status == "unusable" or credits is None:
            row = await db.get_coupon(self.credits.pool, code)
            if row is None:
                raise NotFound(f"no coupon {code!r}")
            raise Conflict(f"coupon {code!r} cannot be redeemed: {self._unusable(row)}")
        meta = msgspec.json.encode({"coupon": code})
        call = self.credits.apply_call(
            user, req.request_id, to_micro(credits), fp, "bonus", ["meta", meta]
        )
        res = applied(
            await self.credits.call(self.credits.scripts.apply, user, call.keys, call.args), call
        )
        return RedeemResult(
            code=code,
            user_id=user,
            transaction_id=res.txn,
            granted=fmt(res.delta),
            credits_remaining=fmt(res.balance),
            replayed=res.status == "replay",
        )
