"""Resyncs: Redis loses changes the flusher had already booked (a failover promoted a replica that
lacked them: here the user's state is put back to an earlier copy, its idempotency records
dropped), and the user spends on. The flush that books those next events notices that their
versions went back, corrects Redis by what the ledger holds beyond it, and the books balance:
Redis = PostgreSQL = ledger, every acknowledged debit charged once, on one Redis and a cluster."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.base.settings import Settings
from gateway.credits.keys import Keys
from gateway.flusher import flush as flush_module
from gateway.ops.reconcile import reconcile
from gateway.ops.repair import repair
from tests.books import assert_books_balance, forget_request
from tests.conftest import BACKENDS, Client

pytestmark = pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)


async def debit(client: Client, user: str, amount: str, request_id: str) -> None:
    r = await client.post(
        "/api/v1/credits/debit",
        json={"user_id": user, "amount": amount, "request_id": request_id},
    )
    assert r.status_code == 200, r.text


DAY = Settings().idempotency_ttl  # the tests' gateways keep the default window


async def balance(client: Client, user: str) -> Decimal:
    r = await client.get("/api/v1/credits/balance", params={"user_id": user})
    return Decimal(r.json()["credits_remaining"])


async def lose_since(
    redis: Redis, keys: Keys, user: str, state: dict[str, str], *rids: str
) -> None:
    """What a promoted replica that lacked the last changes holds: the user's state as it
    was, and none of those changes' idempotency records."""
    await redis.delete(keys.user(user))
    await redis.hset(keys.user(user), mapping=state)
    for rid in rids:
        await forget_request(redis, keys, user, rid, DAY)


async def test_booked_changes_redis_lost_are_given_back_to_it_once(
    client: Client, redis: Redis, keys: Keys, pool: asyncpg.Pool
) -> None:
    flusher = client.app.state.services.flusher
    user = "lost"
    await debit(client, user, "0.10", "w1")
    copy = await redis.hgetall(keys.user(user))  # what the replica had
    await debit(client, user, "0.10", "w2")
    await debit(client, user, "0.10", "w3")
    await flusher.flush()  # w2 and w3 are booked, then the primary dies without replicating
    await lose_since(redis, keys, user, copy, "w2", "w3")
    assert await balance(client, user) == Decimal("4.9")  # Redis forgot w2 and w3

    await debit(client, user, "0.05", "n1")  # the user spends on, on the promoted replica
    await debit(client, user, "0.05", "n2")
    stats = await flusher.flush()
    assert stats.resynced == 1
    assert await balance(client, user) == Decimal("4.6")  # 5 - 3 x 0.10 - 2 x 0.05
    await debit(client, user, "0.05", "n3")
    assert (await flusher.flush()).resynced == 0  # once: the fence holds the older events
    assert await balance(client, user) == Decimal("4.55")
    assert await assert_books_balance(pool, redis, keys) == 1

    rows = await pool.fetch(
        "SELECT transaction_type, amount, request_id FROM credit_transactions "
        "WHERE user_id = $1 ORDER BY created_at, redis_version",
        user,
    )
    usage = sorted(r["request_id"] for r in rows if r["transaction_type"] == "usage")
    assert usage == ["n1", "n2", "n3", "w1", "w2", "w3"]  # each once
    resync = [r for r in rows if r["transaction_type"] == "resync"]
    assert len(resync) == 1 and resync[0]["amount"] == 0
    made = await pool.fetchrow(
        "SELECT delta, settled_at FROM redis_resyncs WHERE user_id = $1", user
    )
    assert made["delta"] == Decimal("-0.2") and made["settled_at"] is not None
    audit = await pool.fetch("SELECT actor FROM audit_log WHERE action = 'resync'")
    assert [a["actor"] for a in audit] == ["system:failover"]


async def test_a_batch_flushed_again_after_a_rollback_corrects_once(
    client: Client, redis: Redis, keys: Keys, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush's transaction fails after resync.lua ran: the next flush books the batch again
    and asks again, and Redis is corrected once."""
    flusher = client.app.state.services.flusher
    user = "twice"
    await debit(client, user, "0.10", "w1")
    copy = await redis.hgetall(keys.user(user))
    await debit(client, user, "0.25", "w2")
    await flusher.flush()
    await lose_since(redis, keys, user, copy, "w2")
    await debit(client, user, "0.05", "n1")

    real = flush_module.resync_users

    async def then_fail(*args: object, **kwargs: object) -> int:
        await real(*args, **kwargs)  # type: ignore[arg-type]
        raise ConnectionError("PostgreSQL went away before the commit")

    monkeypatch.setattr(flush_module, "resync_users", then_fail)
    with pytest.raises(ConnectionError):
        await flusher.flush()
    monkeypatch.setattr(flush_module, "resync_users", real)
    await flusher.flush()
    await flusher.flush()
    assert await balance(client, user) == Decimal("4.6")  # 5 - 0.10 - 0.25 - 0.05
    assert await assert_books_balance(pool, redis, keys) == 1


async def test_a_retry_redis_forgot_within_the_window_is_charged_once(
    client: Client, redis: Redis, keys: Keys, pool: asyncpg.Pool
) -> None:
    """The answer to w1 was lost, w1 was booked, then Redis lost it (a failover, Redis emptied)
    with its record: the client's retry is charged again by Redis, and the flusher books the
    request once and gives the second charge back."""
    flusher = client.app.state.services.flusher
    user = "retried"
    await debit(client, user, "0.01", "w0")
    copy = await redis.hgetall(keys.user(user))
    await debit(client, user, "0.10", "w1")
    await flusher.flush()
    await lose_since(redis, keys, user, copy, "w1")
    await debit(client, user, "0.10", "w1")  # the retry: Redis no longer knows it
    assert await balance(client, user) == Decimal("4.89")
    stats = await flusher.flush()
    assert stats.resynced == 1
    await flusher.flush()
    assert await balance(client, user) == Decimal("4.89")  # 5 - 0.01 - 0.10, once
    rows = await pool.fetch(
        "SELECT request_id FROM credit_transactions WHERE user_id = $1 AND "
        "transaction_type = 'usage' ORDER BY request_id",
        user,
    )
    assert [r["request_id"] for r in rows] == ["w0", "w1"]  # no sys:reused: booking
    assert await assert_books_balance(pool, redis, keys) == 1


async def test_a_repair_after_a_lost_resync_supersedes_it(
    client: Client, redis: Redis, keys: Keys, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user spends while a flush resyncs it (the fence lands above PostgreSQL's version),
    then a second failover takes back the resync itself and those debits: the user's open
    resync names a fence Redis never reached. `reconcile --repair` measures Redis again, and
    its resync supersedes the old one, whose fence would otherwise hold the new event back."""
    flusher = client.app.state.services.flusher
    user = "lost-twice"
    await debit(client, user, "0.10", "w1")
    copy = await redis.hgetall(keys.user(user))
    await debit(client, user, "0.10", "w2")
    await flusher.flush()
    await lose_since(redis, keys, user, copy, "w2")
    await debit(client, user, "0.05", "n1")
    again = await redis.hgetall(keys.user(user))  # what a second promoted replica will hold
    real = flush_module.resync_users

    async def spending_meanwhile(*args: Any) -> int:
        await debit(client, user, "0.05", "n2")
        await debit(client, user, "0.05", "n3")
        return await real(*args)

    monkeypatch.setattr(flush_module, "resync_users", spending_meanwhile)
    assert (await flusher.flush()).resynced == 1
    monkeypatch.setattr(flush_module, "resync_users", real)
    # the second failover: n2, n3 and the resync's event are gone from Redis, never booked
    await redis.xtrim(keys.user_stream(user), maxlen=0)
    await lose_since(redis, keys, user, again, "n2", "n3")
    await debit(client, user, "0.05", "n4")
    await flusher.flush()

    report = await reconcile(redis, pool, keys)
    assert report.drift
    assert await repair(redis, pool, keys, report, "cli:test") == 1
    await flusher.flush()
    open_ones = await pool.fetchval(
        "SELECT count(*) FROM redis_resyncs WHERE user_id = $1 AND settled_at IS NULL", user
    )
    assert open_ones == 0
    assert await balance(client, user) == Decimal("4.7")  # 5 - 2 x 0.10 - n1 - n4
    assert await assert_books_balance(pool, redis, keys) == 1
