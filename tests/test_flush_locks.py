"""A flush and the locks it takes (persistence/ledger.py try_flush_lock): a shard another
flusher holds is skipped at once; a shard whose users cold paths are loading (the stream's lock
held shared, persistence.ledger.wait_for_flush) is waited for, not skipped, so back-to-back
loads cannot starve the flusher; a wait longer than LOCK_WAIT_MS gives the shard up for the
next flush, with nothing changed."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.credits.keys import Keys, shard_of
from gateway.flusher.flush import Flusher
from persistence import ledger
from tests.books import assert_books_balance
from tests.conftest import Client

USER = "lk"


async def _pending(client: Client, keys: Keys, n: int) -> tuple[Flusher, int]:
    """n debits of USER waiting in Redis; the app's flusher and USER's shard."""
    for i in range(n):
        r = await client.post(
            "/api/v1/credits/debit", json={"user_id": USER, "amount": "0.01", "request_id": f"{i}"}
        )
        assert r.status_code == 200
    return client.app.state.services.flusher, shard_of(USER, keys.shards)


async def _usage(pool: asyncpg.Pool) -> int:
    n: int = await pool.fetchval(
        "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'usage'"
    )
    return n


async def test_a_flush_waits_for_the_cold_paths_of_its_shard(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    flusher, shard = await _pending(client, keys, 3)
    async with pool.acquire() as load, load.transaction():
        await ledger.wait_for_flush(load, [keys.stream(shard)])  # as a cold path holds it
        flushing = asyncio.ensure_future(flusher.flush_shard(shard))
        await asyncio.sleep(0.3)
        assert not flushing.done()  # waiting, not skipped
    stats = await asyncio.wait_for(flushing, 10)
    assert stats.skipped_shards == [] and stats.inserted == 3
    assert await _usage(pool) == 3
    await assert_books_balance(pool, redis, keys)


async def test_a_shard_another_flusher_holds_is_skipped_at_once(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    flusher, shard = await _pending(client, keys, 2)
    async with pool.acquire() as other, other.transaction():
        assert await ledger.try_flush_lock(other, keys.stream(shard))
        stats = await asyncio.wait_for(flusher.flush_shard(shard), 2)
        assert stats.skipped_shards == [shard] and stats.inserted == 0
    assert await _usage(pool) == 0
    await flusher.flush()
    await assert_books_balance(pool, redis, keys)


async def test_a_wait_past_the_bound_leaves_the_shard_for_the_next_flush(
    client: Client,
    pool: asyncpg.Pool,
    redis: Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flusher, shard = await _pending(client, keys, 2)
    monkeypatch.setattr(ledger, "LOCK_WAIT_MS", 200)
    async with pool.acquire() as load, load.transaction():
        await ledger.wait_for_flush(load, [keys.stream(shard)])
        stats = await asyncio.wait_for(flusher.flush_shard(shard), 5)
        assert stats.skipped_shards == [shard] and stats.inserted == 0
    assert await _usage(pool) == 0
    stats = await flusher.flush_shard(shard)
    assert stats.inserted == 2
    await assert_books_balance(pool, redis, keys)
