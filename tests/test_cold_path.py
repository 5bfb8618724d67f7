"""The cold path, coalesced (gateway/credits/cold.py): the first requests of many new users in
one tick are created in PostgreSQL by one statement and hydrated in one pipeline; each user is
created once, whatever races it, and one user's fault fails only that user."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.base.errors import Unprocessable
from gateway.credits.keys import Keys
from persistence.users import create_users_credits
from tests.books import assert_books_balance
from tests.conftest import BACKENDS, Client

ON_BOTH = pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)


async def _debit(client: Client, user: str, rid: str) -> int:
    r = await client.post(
        "/api/v1/credits/debit", json={"user_id": user, "amount": "0.5", "request_id": rid}
    )
    return r.status_code


@ON_BOTH  # on one Redis and on a Redis Cluster of 3 masters
async def test_new_users_arriving_together_are_created_in_few_statements(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    cold = client.app.state.services.credits.cold
    before = cold.loads
    users = [f"new-{i}" for i in range(300)]
    # each user twice at once: the two misses share one load
    codes = await asyncio.gather(*(_debit(client, u, f"r{n}") for u in users for n in range(2)))
    assert Counter(codes) == {200: 600}
    loads = cold.loads - before
    assert 1 <= loads <= 20, loads  # 300 users, not 300 statements
    created = await pool.fetch(
        "SELECT user_id, count(*) AS n FROM credit_transactions "
        "WHERE request_id = 'sys:create' GROUP BY user_id"
    )
    assert sorted(r["user_id"] for r in created) == sorted(users)
    assert {r["n"] for r in created} == {1}
    await client.app.state.services.flusher.flush()
    balances = await pool.fetch("SELECT credits_remaining FROM user_credits")
    assert {b["credits_remaining"] for b in balances} == {Decimal("4.000000")}


@ON_BOTH
async def test_one_bad_user_fails_alone(client: Client, pool: asyncpg.Pool) -> None:
    credits = client.app.state.services.credits
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    answers = await asyncio.gather(
        credits.hydrate("x" * 256, now_ms),
        *(credits.hydrate(f"good-{i}", now_ms) for i in range(5)),
        return_exceptions=True,
    )
    assert isinstance(answers[0], Unprocessable) and "at most 255" in answers[0].detail
    assert [a.user_id for a in answers[1:]] == [f"good-{i}" for i in range(5)]  # type: ignore[union-attr]
    assert await pool.fetchval("SELECT count(*) FROM user_credits") == 5


async def test_overlapping_creations_on_two_connections_create_each_user_once(
    pool: asyncpg.Pool,
) -> None:
    """Two gateways' statements with overlapping users: sorted ids make the second wait for the
    first's rows (no deadlock), and the users it finds created come back on its retry."""
    now = datetime.now(UTC)
    first = [(f"o-{i}", now, now) for i in range(0, 400)]
    second = [(f"o-{i}", now, now) for i in range(200, 600)][::-1]

    async def create(users: list[tuple[str, datetime, datetime]]) -> dict[str, bool]:
        async with pool.acquire() as conn, conn.transaction():
            found = await create_users_credits(
                conn, users, tier="free", allocation=Decimal(5), monthly_cap=None
            )
            return {u: created for u, (_, created) in found.items()}

    a, b = await asyncio.gather(create(first), create(second))
    assert len(a) == 400 and len(b) == 400
    both = set(a) & set(b)
    assert len(both) == 200 and all(a[u] != b[u] for u in both)  # one of the two created it
    assert await pool.fetchval("SELECT count(*) FROM user_credits") == 600
    assert await pool.fetchval("SELECT count(*) FROM credit_transactions") == 600
    assert await pool.fetchval("SELECT count(*) FROM credit_grants") == 600


@ON_BOTH
async def test_a_load_waits_for_a_flush_of_its_users_shards(
    client: Client, pool: asyncpg.Pool, keys: Keys
) -> None:
    """While a flush holds a shard (its advisory lock, as flush_shard takes it), the cold path
    of that shard's users waits for it to commit: it never loads a row about to move."""
    credits = client.app.state.services.credits
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    async with pool.acquire() as flush, flush.transaction():
        await flush.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))", keys.user_stream("waiter")
        )
        load = asyncio.ensure_future(
            asyncio.gather(credits.hydrate("waiter", now_ms), credits.hydrate("other-1", now_ms))
        )
        await asyncio.sleep(0.3)
        assert not load.done()
        assert await pool.fetchval("SELECT count(*) FROM user_credits") == 0
    rows = await asyncio.wait_for(load, 10)
    assert sorted(r.user_id for r in rows) == ["other-1", "waiter"]


@ON_BOTH
async def test_a_new_users_hydrate_and_its_call_go_in_one_pipeline(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    """A new user's first debit: the call that missed, then its hydrate and the call again in
    one pipeline, in that order: two round trips to Redis, three script calls."""
    credits = client.app.state.services.credits
    coalescer = credits.coalescer
    assert await _debit(client, "warm", "w") == 200  # the scripts loaded, the key cached
    batches, calls = coalescer.batches, coalescer.calls
    assert await _debit(client, "first", "f") == 200
    assert (coalescer.batches - batches, coalescer.calls - calls) == (2, 3)
    assert await _debit(client, "first", "f") == 200  # the retry: its record answers
    await client.app.state.services.flusher.flush()
    balances = await pool.fetch("SELECT user_id, credits_remaining FROM user_credits")
    assert {b["user_id"]: b["credits_remaining"] for b in balances} == {
        "warm": Decimal("4.500000"),
        "first": Decimal("4.500000"),
    }
    assert await assert_books_balance(pool, redis, keys) == 2


async def test_a_hydrate_that_did_not_land_first_is_sent_again_on_its_own(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call sent after its hydrate still misses (here: a hydrate that writes nothing, as a
    user deleted between the two would look): the user is loaded and hydrated alone, then the
    call goes once more, and is charged once."""
    credits = client.app.state.services.credits
    real, pair = credits.scripts.hydrate, credits.coalescer.run_in_order
    credits.scripts.hydrate = redis.register_script("return 0")

    async def once(calls: list[Any]) -> list[Any]:
        answers = await pair(calls)
        credits.scripts.hydrate = real
        return answers

    monkeypatch.setattr(credits.coalescer, "run_in_order", once)
    assert await _debit(client, "late", "l") == 200
    await client.app.state.services.flusher.flush()
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM credit_transactions WHERE user_id = 'late' AND request_id = 'l'"
        )
        == 1
    )
    assert await assert_books_balance(pool, redis, keys) == 1


async def test_a_user_that_never_stays_in_redis_is_a_503_and_nothing_changes(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    """Every hydrate lost (a Redis being emptied as fast as it is filled): a 503 saying so, no
    charge; the same request goes through once Redis keeps the user."""
    credits = client.app.state.services.credits
    real = credits.scripts.hydrate
    credits.scripts.hydrate = redis.register_script("return 0")
    body = {"user_id": "gone", "amount": "0.5", "request_id": "g"}
    r = await client.post("/api/v1/credits/debit", json=body)
    assert r.status_code == 503 and "left Redis" in r.json()["detail"]
    assert "retry-after" in r.headers
    credits.scripts.hydrate = real
    assert await _debit(client, "gone", "g") == 200
    await client.app.state.services.flusher.flush()
    assert await pool.fetchval("SELECT credits_remaining FROM user_credits") == Decimal("4.5")
    assert await assert_books_balance(pool, redis, keys) == 1
