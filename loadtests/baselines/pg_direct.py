"""The PostgreSQL-direct baseline: per debit, a conditional UPDATE ... RETURNING on
user_credits and a ledger INSERT, in one transaction (what a service without Redis does)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import asyncpg
import msgspec
from litestar import Litestar, Response, post
from litestar.datastructures import State

DEBIT = """
UPDATE user_credits SET credits_remaining = credits_remaining - $2, updated_at = now()
WHERE user_id = $1 AND credits_remaining >= $2
RETURNING credits_remaining
"""
LEDGER = """
INSERT INTO credit_transactions (id, user_id, transaction_type, amount, balance_after, request_id)
VALUES ($1, $2, 'usage', $3, $4, $5)
"""


class Debit(msgspec.Struct):
    user_id: str
    amount: str
    request_id: str


@post("/debit", status_code=200)
async def debit(data: Debit, state: State) -> Response[dict[str, object]]:
    amount = Decimal(data.amount)
    async with state.pool.acquire() as conn, conn.transaction():
        left = await conn.fetchval(DEBIT, data.user_id, amount)
        if left is None:
            return Response({"detail": "insufficient credits"}, status_code=402)
        await conn.execute(LEDGER, uuid.uuid4(), data.user_id, -amount, left, data.request_id)
    return Response({"user_id": data.user_id, "credits_remaining": str(left)}, status_code=200)


def create_app() -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(
            os.environ["BENCH_DATABASE_URL"], min_size=8, max_size=32
        )
        yield
        await app.state.pool.close()

    return Litestar([debit], lifespan=[lifespan], logging_config=None)
