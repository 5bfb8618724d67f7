"""Concurrency on the hot path: no overspend, one charge per request_id, one hydration."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.credits.keys import Keys
from tests.books import assert_books_balance
from tests.conftest import BACKENDS, Client

# on one Redis and on a Redis Cluster of 3 masters
pytestmark = pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)


async def _debit(client: Client, user: str, amount: str, rid: str) -> tuple[int, dict[str, str]]:
    r = await client.post(
        "/api/v1/credits/debit", json={"user_id": user, "amount": amount, "request_id": rid}
    )
    return r.status_code, r.json()


async def test_200_debits_against_a_balance_for_100(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    # trial allocation 5.00 covers exactly 100 debits of 0.05; the user is unknown at first,
    # so the 200 requests also race the cold path (create in Postgres, hydrate into Redis)
    results = await asyncio.gather(*(_debit(client, "hot", "0.05", f"r{i}") for i in range(200)))
    codes = Counter(code for code, _ in results)
    assert codes == {200: 100, 402: 100}
    assert len({body["transaction_id"] for code, body in results if code == 200}) == 100
    bal = await client.get("/api/v1/credits/balance", params={"user_id": "hot"})
    assert bal.json()["credits_remaining"] == "0.000000"
    await client.app.state.services.flusher.flush()
    assert (
        await pool.fetchval("SELECT credits_remaining FROM user_credits WHERE user_id='hot'") == 0
    )
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM credit_transactions "
            "WHERE user_id='hot' AND transaction_type='usage'"
        )
        == 100
    )
    assert await pool.fetchval("SELECT count(*) FROM user_credits") == 1
    await assert_books_balance(pool, redis, keys)


async def test_concurrent_retries_of_one_request_charge_once(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    results = await asyncio.gather(*(_debit(client, "retry", "1.5", "the-one") for _ in range(50)))
    assert {code for code, _ in results} == {200}
    assert sum(not body["replayed"] for _, body in results) == 1
    assert len({body["transaction_id"] for _, body in results}) == 1
    assert {body["credits_remaining"] for _, body in results} == {"3.500000"}
    await client.app.state.services.flusher.flush()
    assert (
        await pool.fetchval("SELECT count(*) FROM credit_transactions WHERE request_id='the-one'")
        == 1
    )
    await assert_books_balance(pool, redis, keys)


async def test_debits_while_flushing_keep_the_books(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    flusher = client.app.state.services.flusher
    stop = asyncio.Event()

    async def keep_flushing() -> None:
        while not stop.is_set():
            await flusher.flush()
            await asyncio.sleep(0)

    bg = asyncio.create_task(keep_flushing())
    results = await asyncio.gather(
        *(_debit(client, f"user{i % 20}", "0.01", f"r{i}") for i in range(600))
    )
    stop.set()
    await bg
    assert Counter(code for code, _ in results) == {200: 600}
    await flusher.flush()
    assert await assert_books_balance(pool, redis, keys) == 20
