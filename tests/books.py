"""Checks that the books balance, with the same reconcile operators run."""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from gateway.credits.keys import Keys
from gateway.credits.scripts import Scripts
from gateway.ops.reconcile import reconcile


async def assert_books_balance(pool: asyncpg.Pool, redis: Redis, keys: Keys) -> int:
    """After a flush: nothing left in Redis to flush, and for every user Redis = PostgreSQL =
    the sum of its ledger, no negative balance, and the summaries kept with the ledger equal
    its rows (reconcile --deep). Returns the number of users checked."""
    report = await reconcile(redis, pool, keys, deep=True)
    assert report.backlog == 0, f"{report.backlog} events not flushed"
    assert report.ok, report.drift
    return report.users


async def forget_request(redis: Redis, keys: Keys, user: str, request_id: str, ttl: int) -> bool:
    """Drop a request's idempotency record, as Redis losing it or its window ending would
    (record.lua); ttl: the gateway's METERING_IDEMPOTENCY_TTL. True when there was one."""
    bucket, field = keys.record(user, request_id)
    found = await Scripts(redis).record(keys=[bucket], args=[user, 0, "month", "", field, ttl, "1"])
    return found is not None
