"""The write-behind flusher: exactly-once effect under crashes, retries and concurrent flushers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.base.connect import connect_redis
from gateway.base.settings import Settings
from gateway.credits.clock import epoch_ms
from gateway.credits.ids import new_id
from gateway.credits.keys import Keys, shard_of
from gateway.flusher import flush as flusher_module
from gateway.flusher.flush import Flusher
from persistence import db
from persistence.events import SEP, fields, line_of
from persistence.ledger import apply_events
from tests.books import assert_books_balance, forget_request
from tests.conftest import BACKENDS, Client, FakeClock, gateway

# on one Redis and on a Redis Cluster of 3 masters
pytestmark = pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)


async def spend(client: Client, users: int, per_user: int, amount: str = "0.01") -> int:
    results = await asyncio.gather(
        *(
            client.post(
                "/api/v1/credits/debit",
                json={"user_id": f"f{u}", "amount": amount, "request_id": f"r{u}-{i}"},
            )
            for u in range(users)
            for i in range(per_user)
        )
    )
    assert {r.status_code for r in results} == {200}
    return len(results)


async def usage_rows(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'usage'"
        )
    )


async def test_crash_after_commit_before_ack_does_not_double_count(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = await spend(client, users=5, per_user=20)
    flusher: Flusher = client.app.state.services.flusher

    async def crash(*_: Any) -> None:
        raise ConnectionError("gateway died between the Postgres commit and XTRIM")

    monkeypatch.setattr(flusher, "acknowledge", crash)
    with pytest.raises(ConnectionError):
        await flusher.flush()
    committed = await usage_rows(pool)
    assert committed > 0  # committed ...
    assert await flusher.backlog() == n  # ... but nothing acknowledged in Redis
    monkeypatch.undo()
    stats = await flusher.flush()  # the retry re-reads events already applied
    assert stats.events == n and stats.inserted == n - committed
    assert await usage_rows(pool) == n
    assert await flusher.backlog() == 0
    await assert_books_balance(pool, redis, keys)


async def test_failure_before_commit_loses_nothing(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = await spend(client, users=3, per_user=10)
    flusher: Flusher = client.app.state.services.flusher

    async def apply_then_fail(conn: asyncpg.Connection, events: list[Any], *rest: Any) -> Any:
        await apply_events(conn, events, *rest)
        raise asyncpg.PostgresConnectionError("connection lost before COMMIT")

    monkeypatch.setattr(flusher_module, "apply_events", apply_then_fail)
    with pytest.raises(asyncpg.PostgresConnectionError):
        await flusher.flush()
    assert await usage_rows(pool) == 0  # rolled back
    assert await flusher.backlog() == n  # still in Redis
    monkeypatch.undo()
    stats = await flusher.flush()
    assert stats.inserted == n and await usage_rows(pool) == n
    await assert_books_balance(pool, redis, keys)


async def test_acknowledging_a_batch_keeps_events_that_arrived_after_it(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    """The trim after a commit removes the batch read and nothing newer: debits that landed
    between the read and the trim stay for the next flush."""
    await spend(client, users=1, per_user=5)
    stream = keys.user_stream("f0")
    batch = await redis.xrange(stream, count=3)
    async with pool.acquire() as conn, conn.transaction():
        await apply_events(conn, [line_of(f) for _, f in batch])
    await client.post(
        "/api/v1/credits/debit", json={"user_id": "f0", "amount": "1", "request_id": "late"}
    )
    flusher: Flusher = client.app.state.services.flusher
    await flusher.acknowledge(stream, batch[-1][0])
    left = [fields(line_of(f))["rid"] for _, f in await redis.xrange(stream)]
    assert len(left) == 3 and left[-1] == "late"
    first = {fields(line_of(f))["rid"] for _, f in batch}
    assert set(left) == {f"r0-{i}" for i in range(5)} - first | {"late"}
    await flusher.flush()
    assert await usage_rows(pool) == 6
    await assert_books_balance(pool, redis, keys)


async def test_events_in_the_format_before_lines_are_flushed(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    """An upgrade finds events the previous version wrote as a field per name: they flush like
    the others."""
    await spend(client, users=1, per_user=3)
    stream = keys.user_stream("f0")
    entries = await redis.xrange(stream)
    await redis.delete(stream)
    for _, entry in entries:  # the same events, as the old scripts wrote them
        await redis.xadd(stream, {k: v for k, v in fields(line_of(entry)).items() if v})
    assert "e" not in (await redis.xrange(stream))[0][1]
    stats = await client.app.state.services.flusher.flush()
    assert stats.inserted == 3 and await usage_rows(pool) == 3
    await assert_books_balance(pool, redis, keys)


async def test_a_malformed_event_fails_its_batch_and_changes_nothing(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    await spend(client, users=1, per_user=2)
    good = [line_of(f) for _, f in await redis.xrange(keys.user_stream("f0"))]
    short = good[0].rsplit("\x1f", 1)[0]  # a value missing
    with pytest.raises(asyncpg.NotNullViolationError):
        async with pool.acquire() as conn, conn.transaction():
            await apply_events(conn, [good[1], short])
    assert await usage_rows(pool) == 0
    with pytest.raises(ValueError, match="24 values, not 25"):
        fields(short)


async def test_an_event_written_before_the_token_kinds_still_flushes(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    """A line of 22 values (the version before cached/cache-write/reasoning tokens), left in a
    stream across an upgrade, goes into the ledger with those counts NULL."""
    await spend(client, users=1, per_user=1)
    (_, entry), *_ = await redis.xrange(keys.user_stream("f0"))
    old = SEP.join(line_of(entry).split(SEP)[:22])
    assert fields(old)["trs"] == ""
    async with pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:
            await apply_events(conn, [old])
            row = await conn.fetchrow(
                "SELECT amount, reasoning_tokens FROM credit_transactions WHERE request_id = $1",
                fields(old)["rid"],
            )
            assert row is not None and row["reasoning_tokens"] is None
        finally:
            await tr.rollback()


async def test_an_event_postgresql_refuses_is_set_aside_and_the_rest_flows(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    """One event PostgreSQL refuses (here: a user it does not have, as after restoring an old
    backup) must not stop its shard: it moves to the dead-letter stream with the reason, every
    other event of the batch is applied, and the next flush does not try it again."""
    await spend(client, users=1, per_user=3)
    stream = keys.user_stream("f0")
    values = fields(line_of((await redis.xrange(stream, count=1))[0][1]))
    values.update(u="ghost", tx=new_id(), rid="ghost-1")
    poison_id = await redis.xadd(stream, {"e": SEP.join(values.values())})
    for i in range(2):
        r = await client.post(
            "/api/v1/credits/debit",
            json={"user_id": "f0", "amount": "0.01", "request_id": f"after-{i}"},
        )
        assert r.status_code == 200
    flusher: Flusher = client.app.state.services.flusher
    stats = await flusher.flush()
    assert (stats.events, stats.inserted, stats.dead) == (6, 5, 1)
    assert await usage_rows(pool) == 5 and await flusher.backlog() == 0
    [(_, dead)] = await redis.xrange(keys.dead(shard_of("f0", keys.shards)))
    assert dead["id"] == poison_id and fields(dead["e"])["u"] == "ghost"
    assert dead["error"].startswith("ForeignKeyViolationError")
    ready = (await client.get("/health/ready")).json()
    assert ready["flusher"]["dead_letters"] == 1
    assert "metering_dead_letters_waiting 1.0" in (await client.get("/metrics")).text
    assert (await flusher.flush()).dead == 0  # set aside once, not tried again
    await assert_books_balance(pool, redis, keys)


async def test_replaying_an_old_batch_changes_nothing(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    await spend(client, users=2, per_user=5)
    old = [line_of(f) for s in keys.all_streams() for _, f in await redis.xrange(s)]
    await client.post(
        "/api/v1/credits/debit", json={"user_id": "f0", "amount": "1", "request_id": "later"}
    )
    await client.app.state.services.flusher.flush()
    async with pool.acquire() as conn, conn.transaction():
        result = await apply_events(conn, old)  # a stale, duplicate batch
    assert (result.inserted, result.users) == (0, 0)
    await assert_books_balance(pool, redis, keys)


async def test_two_flushers_at_once_apply_each_event_once(
    client: Client,
    pool: asyncpg.Pool,
    redis: Redis,
    keys: Keys,
    database_url: str,
    redis_url: str,
) -> None:
    n = await spend(client, users=40, per_user=25)
    flushers: list[Flusher] = []
    pools = [await db.open_pool(database_url, max_size=2) for _ in range(3)]
    clients = [connect_redis(redis_url, 5.0) for _ in range(3)]
    try:
        flushers = [Flusher(r, p, keys, batch=37) for r, p in zip(clients, pools, strict=True)]
        stats = await asyncio.gather(*(f.flush() for f in flushers))
        # shards skipped because another flusher held them are drained by a later round
        rest = await flushers[0].flush()
        assert sum(s.inserted for s in stats) + rest.inserted == n
        assert await usage_rows(pool) == n
    finally:
        for r in clients:
            await r.aclose()
        for p in pools:
            await p.close()
    await assert_books_balance(pool, redis, keys)


async def test_redis_emptied_rehydrates_from_postgres(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    await client.post(
        "/api/v1/credits/debit", json={"user_id": "lost", "amount": "2", "request_id": "a"}
    )
    await client.app.state.services.flusher.flush()
    await redis.delete(keys.user("lost"))  # as after FLUSHALL or a fresh Redis
    bal = await client.get("/api/v1/credits/balance", params={"user_id": "lost"})
    assert bal.json()["credits_remaining"] == "3.000000"  # not a fresh 5.00 allocation
    r = await client.post(
        "/api/v1/credits/debit", json={"user_id": "lost", "amount": "1", "request_id": "b"}
    )
    assert r.json()["credits_remaining"] == "2.000000"
    await client.app.state.services.flusher.flush()
    await assert_books_balance(pool, redis, keys)


async def test_hydration_never_overwrites_a_newer_redis_state(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    await client.post(
        "/api/v1/credits/debit", json={"user_id": "h", "amount": "1", "request_id": "a"}
    )
    service = client.app.state.services.credits
    # a second gateway hydrating late from the (stale) Postgres row
    await service.hydrate("h", epoch_ms(await service.now()))
    assert (await redis.hget(keys.user("h"), "bal")) == "4000000"


async def test_background_job_flushes_on_its_own(
    settings: Any, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    from gateway.api.app import create_app
    from tests.conftest import running

    app = create_app(type(settings)(**{**_fields(settings), "flush_interval": 0.05}))
    async with running(app):
        await app.state.services.credits.balance("bg")
        from decimal import Decimal

        from gateway.credits.schemas import DebitRequest

        await app.state.services.credits.debit(
            DebitRequest(user_id="bg", amount=Decimal("1"), request_id="x")
        )
        await _eventually(
            lambda: pool.fetchval("SELECT count(*) FROM credit_transactions WHERE request_id='x'")
        )
    await assert_books_balance(pool, redis, keys)


def _fields(settings: Any) -> dict[str, Any]:
    return {f: getattr(settings, f) for f in settings.__struct_fields__}


async def _eventually(probe: Callable[[], Awaitable[Any]], tries: int = 200) -> None:
    for _ in range(tries):
        if await probe():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_request_id_reused_after_the_idempotency_window_keeps_the_books(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    """Past Redis's window (2 s here) a request id is charged as a new request; the flusher then
    decides from the ledger: the same body within the retry horizon (10 s) is a retry, its
    charge given back (charged once); another body, or any body past the horizon, is a new
    request under a reused id, booked under sys:reused: (tests/test_resync.py: within the
    window, a record Redis lost)."""
    async with gateway(settings, clock, idempotency_ttl=2, retry_horizon=10) as client:
        flusher = client.app.state.services.flusher

        async def pay(rid: str, amount: str) -> Any:
            body = {"user_id": "late", "amount": amount, "request_id": rid}
            return (await client.post("/api/v1/credits/debit", json=body)).json()

        first = {rid: await pay(rid, "0.5") for rid in ("once", "other", "old")}
        await flusher.flush()
        # the window ends on Redis's own clock (records live 2 to 4 s with a 2 s window); the
        # flusher compares the events' times, on the scripts' clock
        await asyncio.sleep(4.2)
        clock.advance(seconds=3)
        retry = await pay("once", "0.5")
        assert retry["replayed"] is False and retry["credits_remaining"] == "3.000000"
        stats = await flusher.flush()
        assert stats.inserted == 0 and stats.resynced == 1  # given back
        reused = await pay("other", "1")  # another body: a new request
        assert reused["credits_remaining"] == "2.500000"
        clock.advance(seconds=11)  # past the horizon: the same body is a new request too
        late = await pay("old", "0.5")
        assert late["credits_remaining"] == "2.000000"
        stats = await flusher.flush()
        assert stats.inserted == 3 and stats.resynced == 0  # and the resync's own entry
    rows = await pool.fetch(
        "SELECT id::text, request_id FROM credit_transactions "
        "WHERE user_id = 'late' AND transaction_type = 'usage'"
    )
    assert {(r["id"], r["request_id"]) for r in rows} == {
        *((first[rid]["transaction_id"], rid) for rid in first),
        (reused["transaction_id"], f"sys:reused:{reused['transaction_id']}"),
        (late["transaction_id"], f"sys:reused:{late['transaction_id']}"),
    }
    row = await pool.fetchrow("SELECT credits_remaining FROM user_credits WHERE user_id = 'late'")
    assert row is not None and row["credits_remaining"] == Decimal("2.000000")
    await assert_books_balance(pool, redis, keys)


async def test_a_batch_read_before_redis_lost_its_data_never_strands_the_user(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush has read a batch (versions 2-4) when Redis loses its data; the user comes back
    (reloaded from PostgreSQL at version 1) and spends; then the batch commits. Before: the
    cold path loaded the row the batch was about to move, PostgreSQL went to version 4 while
    the reloaded user went on from 1, its next events no longer moved the row, and PostgreSQL
    and Redis disagreed for good. Now the cold path waits for the flush under way."""

    async def pay(amount: str, rid: str) -> Any:
        body = {"user_id": "z", "amount": amount, "request_id": rid}
        return await client.post("/api/v1/credits/debit", json=body)

    await pay("1", "a")
    flusher: Flusher = client.app.state.services.flusher
    await flusher.flush()
    for rid in ("b", "c", "d"):
        await pay("1", rid)
    read, resume = asyncio.Event(), asyncio.Event()
    real = flusher_module.apply_events

    async def held_back(conn: asyncpg.Connection, events: list[str], *rest: Any) -> Any:
        read.set()
        await resume.wait()
        return await real(conn, events, *rest)

    monkeypatch.setattr(flusher_module, "apply_events", held_back)
    flushing = asyncio.create_task(flusher.flush())
    await read.wait()
    monkeypatch.setattr(flusher_module, "apply_events", real)
    await redis.delete(keys.user("z"), keys.holds("z"), keys.user_stream("z"))  # data lost
    for rid in "abcd":
        await forget_request(redis, keys, "z", rid, Settings().idempotency_ttl)
    spending = asyncio.create_task(pay("0.5", "e"))
    await asyncio.sleep(0.3)
    resume.set()
    await flushing
    after = await spending
    assert after.status_code == 200 and after.json()["credits_remaining"] == "0.500000"
    await flusher.flush()
    row = await pool.fetchrow("SELECT credits_remaining, redis_version FROM user_credits")
    assert row["credits_remaining"] == Decimal("0.5") and row["redis_version"] == 5
    await assert_books_balance(pool, redis, keys)
