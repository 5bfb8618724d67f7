"""The naive baseline: a Litestar endpoint that runs one EVALSHA per debit (check and decrement
a balance), with nothing else: no auth, no idempotency, no usage event, no flusher."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import msgspec
from litestar import Litestar, Response, post
from litestar.datastructures import State
from redis.asyncio import BlockingConnectionPool, Redis

DECREMENT = """
local bal = tonumber(redis.call('GET', KEYS[1]) or '-1')
local amt = tonumber(ARGV[1])
if bal < amt then return -1 end
return redis.call('DECRBY', KEYS[1], amt)
"""


class Debit(msgspec.Struct):
    user_id: str
    amount: str
    request_id: str


@post("/debit", status_code=200)
async def debit(data: Debit, state: State) -> Response[dict[str, object]]:
    micro = int(Decimal(data.amount) * 1_000_000)
    left = await state.script(keys=[f"naive:{data.user_id}"], args=[micro])
    if left < 0:
        return Response({"detail": "insufficient credits"}, status_code=402)
    return Response({"user_id": data.user_id, "credits_remaining": left}, status_code=200)


def create_app() -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = BlockingConnectionPool.from_url(os.environ["BENCH_REDIS_URL"], max_connections=64)
        redis = Redis(connection_pool=pool)
        app.state.script = redis.register_script(DECREMENT)
        yield
        await redis.aclose()

    return Litestar([debit], lifespan=[lifespan], logging_config=None)
