"""Coupons and their redemptions (one per user; max_uses enforced by a row lock)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

import asyncpg

from persistence import queries
from persistence.db import Executor


@dataclass(frozen=True, slots=True)
class CouponRow:
    code: str
    credits: Decimal
    max_uses: int | None
    uses: int
    expires_at: datetime | None
    active: bool
    created_at: datetime


def _row(rec: asyncpg.Record | None) -> CouponRow | None:
    return None if rec is None else CouponRow(**dict(rec))


async def insert_coupon(
    conn: Executor,
    code: str,
    credits: Decimal,
    max_uses: int | None,
    expires_at: datetime | None,
    now: datetime,
    actor: str,
) -> CouponRow | None:
    """None when the code is taken."""
    rec = await conn.fetchrow(
        queries.COUPON_INSERT, code, credits, max_uses, expires_at, now, actor
    )
    return _row(rec)


async def get_coupon(conn: Executor, code: str) -> CouponRow | None:
    return _row(await conn.fetchrow(queries.COUPON_GET, code))


async def list_coupons(conn: Executor, limit: int) -> list[CouponRow]:
    return [CouponRow(**dict(r)) for r in await conn.fetch(queries.COUPON_LIST, limit)]


async def deactivate_coupon(conn: Executor, code: str, actor: str) -> CouponRow | None:
    return _row(await conn.fetchrow(queries.COUPON_DEACTIVATE, code, actor))


Redemption = tuple[Literal["new", "replay", "taken", "unusable"], Decimal | None]


async def redeem(
    pool: asyncpg.Pool, code: str, user_id: str, request_id: str, now: datetime
) -> Redemption:
    """Record one redemption in one transaction. Returns ('new', credits) when this call took a
    use, ('replay', credits) when this user already redeemed with this request_id, ('taken', None)
    when with another one, ('unusable', None) when the coupon is unknown, inactive, expired or
    used up."""
    async with pool.acquire() as conn, conn.transaction():
        seen = await conn.fetchval(queries.REDEMPTION_GET, code, user_id)
        if seen is not None and seen != request_id:
            return "taken", None
        if seen is not None:  # a retry: the grant it paid for is idempotent, do it again
            return "replay", await conn.fetchval(queries.COUPON_CREDITS, code)
        credits = await conn.fetchval(queries.COUPON_TAKE_USE, code, now)
        if credits is None:
            return "unusable", None
        if await conn.fetchval(queries.REDEMPTION_INSERT, code, user_id, request_id, now) is None:
            raise _Raced  # the same user redeemed concurrently: roll the use back
        return "new", credits


class _Raced(Exception):
    pass


async def redeem_once(
    pool: asyncpg.Pool, code: str, user_id: str, request_id: str, now: datetime
) -> Redemption:
    try:
        return await redeem(pool, code, user_id, request_id, now)
    except _Raced:
        return await redeem(pool, code, user_id, request_id, now)
