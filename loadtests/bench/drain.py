"""The benchmark's data: PostgreSQL seeded with its users, and the flusher's drain measured
(events written straight through the apply script, then one timed flush)."""

from __future__ import annotations

import time

import asyncpg
from redis.asyncio import Redis

from gateway.credits.clock import epoch_ms, from_ms, period_start
from gateway.credits.ids import new_id
from gateway.credits.keys import Keys
from gateway.credits.money import MICRO
from gateway.credits.records import record_arg
from gateway.credits.scripts import Scripts
from gateway.flusher.flush import Flusher
from loadtests.bench.scenarios import BIG, BLOCK_COUNTS, USERS
from persistence import db
from persistence.migrate import prepare


async def prepare_database(url: str, users: int) -> None:
    await prepare(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO user_credits (user_id, credits_remaining, credits_allocated, tier) "
            "SELECT 'bench-' || i, $1, $1, 'enterprise' FROM generate_series(0, $2 - 1) i "
            "UNION ALL SELECT 'broke-' || i, 0, 0, 'free' FROM generate_series(0, $2 - 1) i",
            BIG,
            users,
        )
        await conn.execute(
            "INSERT INTO credit_transactions (id, user_id, transaction_type, amount, "
            "balance_after, request_id) SELECT gen_random_uuid(), user_id, 'allocation', "
            "credits_remaining, credits_remaining, 'sys:create' FROM user_credits"
        )
        for n in BLOCK_COUNTS:  # users holding n credit blocks: an allocation, n - 1 purchases
            await conn.execute(
                "INSERT INTO user_credits (user_id, credits_remaining, credits_allocated, tier) "
                "SELECT $3::text || i, $1, $1::numeric / $4::int, 'enterprise' "
                "FROM generate_series(0, $2 - 1) i",
                BIG,
                users,
                f"blk{n}-",
                n,
            )
            await conn.execute(
                "INSERT INTO credit_grants (user_id, id, kind, priority, created_at, remaining) "
                "SELECT $2::text || i, 'g' || b, "
                "CASE WHEN b = 0 THEN 'allocation' ELSE 'purchase' END, "
                "CASE WHEN b = 0 THEN 10 ELSE 30 END, now(), $1::numeric / $3::int "
                "FROM generate_series(0, $4 - 1) i, generate_series(0, $3::int - 1) b",
                BIG,
                f"blk{n}-",
                n,
                users,
            )
            await conn.execute(
                "INSERT INTO credit_transactions (id, user_id, transaction_type, amount, "
                "balance_after, request_id) SELECT gen_random_uuid(), user_id, 'allocation', "
                "credits_remaining, credits_remaining, 'sys:create' FROM user_credits "
                "WHERE user_id LIKE $1",
                f"blk{n}-%",
            )
    finally:
        await conn.close()


async def flusher_drain(redis_url: str, database_url: str, events: int) -> dict[str, float]:
    """Fill the streams with `events` debits straight through the Lua script, then time one
    flush that drains them into PostgreSQL."""
    r = Redis.from_url(redis_url, decode_responses=True)
    pool = await db.open_pool(database_url, max_size=4)
    keys = Keys("drain", 16)
    scripts = Scripts(r, max_backlog=events + 1)
    # hydrate.lua's arguments as CreditService.hydrate_args makes them, for a user renewed at
    # the start of this month (by Redis's clock, as the scripts judge it)
    seconds, _ = await r.time()
    began = period_start(from_ms(int(seconds) * 1000))
    hydrate_args = [BIG * MICRO, BIG * MICRO, "enterprise", "", began.isoformat(), 0]
    hydrate_args += [int(began.timestamp()), 0, 0, epoch_ms(began)]
    try:
        before = int((await r.info("memory"))["used_memory"])
        async with r.pipeline(transaction=False) as pipe:
            for i in range(USERS):
                await scripts.hydrate(
                    keys=[keys.user(f"bench-{i}")], args=hydrate_args, client=pipe
                )
            await pipe.execute()
        users_mem = int((await r.info("memory"))["used_memory"])
        await r.script_load(scripts.apply.script)
        sent = 0
        while sent < events:
            async with r.pipeline(transaction=False) as pipe:
                for i in range(sent, min(sent + 5000, events)):
                    user, txn = f"bench-{i % USERS}", new_id()
                    bucket, field = keys.record(user, f"d{i}")
                    pipe.evalsha(
                        scripts.apply.sha,
                        4,
                        keys.user(user),
                        bucket,
                        keys.user_stream(user),
                        keys.holds(user),
                        user,  # the header (gateway/credits/lua/lib.lua): no clock offset
                        0,
                        "month",
                        new_id(),
                        -100,
                        record_arg(field, "00000000", txn),
                        txn,
                        3600,
                        f"d{i}",
                        "usage",
                    )
                await pipe.execute()
            sent = min(sent + 5000, events)
        events_mem = int((await r.info("memory"))["used_memory"])
        start = time.perf_counter()
        stats = await Flusher(r, pool, keys, 5000).flush()
        seconds = time.perf_counter() - start
        return {
            "events": stats.events,
            "seconds": round(seconds, 2),
            "events_per_s": round(stats.events / seconds, 1),
            "redis_bytes_per_user": round((users_mem - before) / USERS, 1),
            "redis_bytes_per_unflushed_event": round((events_mem - users_mem) / events, 1),
        }
    finally:
        await r.aclose()
        await pool.close()
