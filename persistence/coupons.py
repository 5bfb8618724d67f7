"""Coupons and their redemptions (one per user; max_uses enforced by a row lock)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
    credits_expire_after_days: int | None  # a redemption's credits expire after (None: never)


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
    credits_expire_after_days: int | None = None,
) -> CouponRow | None:
    """None when the code is taken."""
    rec = await conn.fetchrow(
        queries.COUPON_INSERT,
        code,
        credits,
        max_uses,
        expires_at,
        now,
        actor,
        credits_expire_after_days,
    )
    return _row(rec)


async def get_coupon(conn: Executor, code: str) -> CouponRow | None:
    return _row(await conn.fetchrow(queries.COUPON_GET, code))


async def list_coupons(conn: Executor, limit: int) -> list[CouponRow]:
    return [CouponRow(**dict(r)) for r in await conn.fetch(queries.COUPON_LIST, limit)]


async def deactivate_coupon(conn: Executor, code: str, actor: str) -> CouponRow | None:
    return _row(await conn.fetchrow(queries.COUPON_DEACTIVATE, code, actor))


@dataclass(frozen=True, slots=True)
class Redemption:
    """What redeeming found: 'new' (this call took a use), 'replay' (this user redeemed with
    this request_id before), 'taken' (with another one), 'unusable' (unknown, inactive, expired
    or used up coupon). For new and replay: the credits, the grant's transaction id and whether
    the grant is known to be made."""

    status: Literal["new", "replay", "taken", "unusable"]
    credits: Decimal | None = None
    transaction_id: str | None = None
    granted: bool = False


async def redeem(
    pool: asyncpg.Pool, code: str, user_id: str, request_id: str, txn: str, now: datetime
) -> Redemption:
    """Record one redemption (its grant to be made under transaction id txn) in one
    transaction, or find the one this user made."""
    async with pool.acquire() as conn, conn.transaction():
        seen = await conn.fetchrow(queries.REDEMPTION_GET, code, user_id)
        if seen is not None and seen["request_id"] != request_id:
            return Redemption("taken", granted=bool(seen["granted"]))
        if seen is not None:
            tx = seen["transaction_id"]
            return Redemption(
                "replay",
                await conn.fetchval(queries.COUPON_CREDITS, code),
                None if tx is None else str(tx),
                bool(seen["granted"]),
            )
        credits = await conn.fetchval(queries.COUPON_TAKE_USE, code, now)
        if credits is None:
            return Redemption("unusable")
        inserted = await conn.fetchval(
            queries.REDEMPTION_INSERT, code, user_id, request_id, now, txn
        )
        if inserted is None:
            raise _Raced  # the same user redeemed concurrently: roll the use back
        return Redemption("new", credits, txn)


class _Raced(Exception):
    pass


async def redeem_once(
    pool: asyncpg.Pool, code: str, user_id: str, request_id: str, txn: str, now: datetime
) -> Redemption:
    try:
        return await redeem(pool, code, user_id, request_id, txn, now)
    except _Raced:
        return await redeem(pool, code, user_id, request_id, txn, now)


@asynccontextmanager
async def settling(pool: asyncpg.Pool, code: str, user_id: str) -> AsyncIterator[Settling]:
    """The redemption's row locked for as long as its grant is being settled, so two calls for
    one redemption never both grant."""
    async with pool.acquire() as conn, conn.transaction():
        granted = await conn.fetchval(queries.REDEMPTION_LOCK, code, user_id)
        yield Settling(conn, code, user_id, bool(granted))


@dataclass(slots=True)
class Settling:
    conn: Executor
    code: str
    user_id: str
    granted: bool  # when the lock was taken

    async def done(self) -> None:
        await self.conn.execute(queries.REDEMPTION_GRANTED, self.code, self.user_id)

    async def undo(self) -> None:
        """The grant cannot be made: the redemption goes and its use is given back."""
        await self.conn.execute(queries.REDEMPTION_UNDO, self.code, self.user_id)

    async def in_ledger(self, transaction_id: str) -> bool:
        return bool(await self.conn.fetchval(queries.LEDGER_HAS, transaction_id))
