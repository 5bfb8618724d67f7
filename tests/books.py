"""Checks that the books balance: Redis = PostgreSQL = sum of the ledger, per user."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
from redis.asyncio import Redis

from gateway.keys import Keys
from gateway.money import to_micro


async def assert_books_balance(pool: asyncpg.Pool, redis: Redis, keys: Keys) -> int:
    """After a flush: every user's PG balance equals Redis, and its ledger sums to it exactly.
    Returns the number of users checked."""
    rows = await pool.fetch(
        "SELECT u.user_id, u.credits_remaining, u.redis_version, "
        "COALESCE(sum(t.amount), 0) AS ledger, count(t.id) AS n "
        "FROM user_credits u LEFT JOIN credit_transactions t USING (user_id) "
        "GROUP BY u.user_id, u.credits_remaining, u.redis_version"
    )
    for r in rows:
        state = await redis.hgetall(keys.user(r["user_id"]))
        assert state, f"{r['user_id']} missing from Redis"
        assert int(state["bal"]) == to_micro(r["credits_remaining"]), r["user_id"]
        assert int(state["ver"]) == r["redis_version"], r["user_id"]
        assert r["ledger"] == r["credits_remaining"], (r["user_id"], r["ledger"])
        assert r["credits_remaining"] >= Decimal(0)
    for stream in keys.all_streams():
        assert await redis.xlen(stream) == 0, f"{stream} not drained"
    return len(rows)
