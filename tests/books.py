"""Checks that the books balance, with the same reconcile operators run."""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from gateway.credits.keys import Keys
from gateway.ops.reconcile import reconcile


async def assert_books_balance(pool: asyncpg.Pool, redis: Redis, keys: Keys) -> int:
    """After a flush: nothing left in Redis to flush, and for every user Redis = PostgreSQL =
    the sum of its ledger, no negative balance, and the summaries kept with the ledger equal
    its rows (reconcile --deep). Returns the number of users checked."""
    report = await reconcile(redis, pool, keys, deep=True)
    assert report.backlog == 0, f"{report.backlog} events not flushed"
    assert report.ok, report.drift
    return report.users
