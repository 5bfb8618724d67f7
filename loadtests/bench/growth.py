"""Cost as data grows (docs/performance.md): a ledger and users generated directly in
PostgreSQL, then what reads them timed at that size.

    python -m loadtests.bench --users 1050000 --ledger-rows 10500000 --skip-baselines --only none

The ledger: one allocation per user, `heavy` usage rows of one user spread over the last 60
days (5 models, 3 services), the rest spread over all users in the same 60 days. Balances are
set to what the ledger sums to, so the books balance. The schema is filled as migration 0014 left
it, then the newer migrations run timed (0015 builds the hourly usage summaries from the rows).

Measured: `/usage`'s query for the heavy user over a 60-day window with unaligned ends (from
the summaries, as the gateway runs it, and the raw-row query it replaced, same run),
`metering reconcile` (time and peak memory of the process) with no user in Redis and again
after loading every user through the cold path (its rate measured), and the renewal cron
with as many idle users all due (in a database of their own, not in Redis: each is hydrated
and renewed), then the flush of its events. Nothing asserts a time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from gateway.base.settings import Settings
from gateway.credits.clock import system_clock
from gateway.credits.tiers import load_tiers
from gateway.flusher.background import make_service, redis_client
from loadtests.bench.renewal import renewal_cost
from persistence import db
from persistence.db import ensure_database
from persistence.history import usage
from persistence.migrate import migrate

BEFORE_SUMMARIES = "0014_redis_resyncs"
MODELS, SERVICES = 5, 3

# The report's query before the summaries (every call summed the window's raw rows): the
# baseline the summaries are compared with.
RAW_USAGE = """
SELECT {key} AS key, count(*) AS requests, COALESCE(sum(-amount), 0) AS credits,
       COALESCE(sum(input_tokens), 0)::bigint AS input_tokens,
       COALESCE(sum(output_tokens), 0)::bigint AS output_tokens
FROM credit_transactions
WHERE user_id = $1 AND transaction_type = 'usage' AND created_at >= $2 AND created_at < $3
GROUP BY 1 ORDER BY 1
"""
RAW_KEYS = {
    "model": "model",
    "service": "metadata->>'service'",
    "day": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}

_USAGE_ROWS = """
INSERT INTO credit_transactions (id, user_id, transaction_type, amount, balance_after,
                                 request_id, model, input_tokens, output_tokens, metadata,
                                 created_at)
SELECT gen_random_uuid(), {user}, 'usage', -((i % 97) + 1)::numeric / 1000000, 0,
       $3::text || i, 'model-' || (i % {models}), i % 1000, i % 300,
       jsonb_build_object('service', 's' || (i % {services})),
       now() - (i::float8 / $2) * interval '60 days'
FROM generate_series(1, $2) i
"""


# Each user's balance as one open allocation block, as the cold path and renewals keep it
# (docs/credit-blocks.md): reconcile compares blocks too.
_BLOCKS = """
INSERT INTO credit_grants (user_id, id, kind, priority, created_at, remaining, amount)
SELECT user_id, 'a-gen', 'allocation', 10, now() - interval '90 days', credits_remaining,
       credits_allocated
FROM user_credits
"""


async def generate(url: str, users: int, rows: int, heavy: int) -> dict[str, float]:
    """Fill the schema as 0014 left it, then run the newer migrations; returns timings (s)."""
    await ensure_database(url)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, until=BEFORE_SUMMARIES)
        t = time.perf_counter()
        await conn.execute("SET synchronous_commit = off")
        await conn.execute(
            "INSERT INTO user_credits (user_id, credits_remaining, credits_allocated, tier) "
            "SELECT 'g-' || i, 1000, 1000, 'pro' FROM generate_series(0, $1 - 1) i",
            users,
        )
        await conn.execute(
            "INSERT INTO credit_transactions (id, user_id, transaction_type, amount, "
            "balance_after, request_id, created_at) SELECT gen_random_uuid(), user_id, "
            "'allocation', 1000, 1000, 'sys:create', now() - interval '90 days' "
            "FROM user_credits"
        )
        fill = dict(models=MODELS, services=SERVICES)
        await conn.execute(_USAGE_ROWS.format(user="$1::text", **fill), "g-0", heavy, "h")
        rest = max(rows - users - heavy, 0)
        await conn.execute(
            _USAGE_ROWS.format(user="'g-' || (i % $1::int)", **fill), users, rest, "r"
        )
        await conn.execute(
            "UPDATE user_credits AS u SET credits_remaining = l.total "
            "FROM (SELECT user_id, sum(amount) AS total FROM credit_transactions "
            "GROUP BY user_id) AS l WHERE l.user_id = u.user_id"
        )
        await conn.execute(_BLOCKS)
        await conn.execute("VACUUM ANALYZE")
        generated = time.perf_counter() - t
        t = time.perf_counter()
        await migrate(conn)
        migrated = time.perf_counter() - t
        # the tables the migrations filled, as autovacuum would have them: without statistics
        # reconcile's plan guesses 99k totals, not 1M (the rest was analyzed before)
        await conn.execute("VACUUM ANALYZE usage_summaries, ledger_totals")
        size = await conn.fetchval("SELECT pg_total_relation_size('credit_transactions')")
        # what each relation costs a ledger row: the table, each index, the summaries
        per_row = {
            r["name"]: round(r["bytes"] / rows, 1)
            for r in await conn.fetch(
                "SELECT c.relname AS name, pg_relation_size(c.oid) AS bytes FROM pg_class c "
                "WHERE c.relname IN ('credit_transactions', 'usage_summaries', 'ledger_totals') "
                "OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN "
                "('credit_transactions'::regclass, 'usage_summaries'::regclass))"
            )
        }
        hours = await conn.fetchval("SELECT count(*) FROM usage_summaries")
        return {
            "generate_s": round(generated, 1),
            "migrate_0015_s": round(migrated, 1),
            "ledger_gb": round(size / 1e9, 2),
            "usage_summaries_rows": hours,
            "bytes_per_ledger_row": per_row,
        }
    finally:
        await conn.close()


def _ms(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    return {"p50_ms": round(statistics.median(samples) * 1000, 2), "p95_ms": round(p95 * 1000, 2)}


async def usage_costs(url: str, calls: int, raw_calls: int) -> dict[str, Any]:
    """p50/p95 of the heavy user's 60-day report, per group_by, summaries vs raw rows."""
    now = datetime.now(UTC)
    start, end = now - timedelta(days=60, minutes=-7), now - timedelta(minutes=3)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    out: dict[str, Any] = {}
    try:
        rows = await pool.fetchval(
            "SELECT count(*) FROM credit_transactions WHERE user_id = 'g-0' "
            "AND transaction_type = 'usage' AND created_at >= $1 AND created_at < $2",
            start,
            end,
        )
        out["rows_in_window"] = rows
        for group_by in ("model", "service", "day"):
            times, raw_times = [], []
            for _ in range(calls):
                t = time.perf_counter()
                summed = await usage(pool, "g-0", start, end, group_by)  # type: ignore[arg-type]
                times.append(time.perf_counter() - t)
            sql = RAW_USAGE.format(key=RAW_KEYS[group_by])
            for _ in range(raw_calls):
                t = time.perf_counter()
                raw = await pool.fetch(sql, "g-0", start, end)
                raw_times.append(time.perf_counter() - t)
            same = [(r["key"], r["requests"], r["credits"]) for r in raw] == [
                (g.key, g.requests, g.credits) for g in summed
            ]
            out[group_by] = {
                "groups": len(summed),
                "summaries": _ms(times),
                "raw_rows": _ms(raw_times),
                "same_answer": same,
            }
            print(f"  /usage group_by={group_by}: {out[group_by]}", flush=True)
    finally:
        await pool.close()
    return out


def reconcile_cost(database_url: str, redis_url: str) -> dict[str, Any]:
    """`metering reconcile` as an operator runs it: wall time and that process's own peak RSS,
    as GNU time reports it (Debian `time`; None without it). Not this process's wait4 or
    RUSAGE_CHILDREN: Linux counts into a child's peak the memory it shared with its parent
    until exec, so a child of this bench, which holds a million users' worth after
    cache_users, showed 1.6 GB whatever it used itself."""
    env = {
        **os.environ,
        "METERING_DATABASE_URL": database_url,
        "METERING_REDIS_URL": redis_url,
        "METERING_REDIS_DURABILITY": "primary",
    }
    gnu_time = shutil.which("time")
    with tempfile.NamedTemporaryFile("r") as peak:
        timer = [gnu_time, "-f", "%M", "-o", peak.name] if gnu_time else []
        t = time.perf_counter()
        done = subprocess.run(
            [*timer, sys.executable, "-m", "gateway.ops.cli", "reconcile"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - t
        kb = peak.read().strip().splitlines()[-1:] if gnu_time else []
    return {
        "seconds": round(wall, 1),
        "peak_rss_mb": round(int(kb[0]) / 1024) if kb and kb[0].isdigit() else None,
        "exit": done.returncode,
        "tail": (done.stdout + done.stderr)[-600:] if done.returncode else "",
    }


async def cache_users(database_url: str, redis_url: str, users: int) -> dict[str, Any]:
    """Load every generated user into Redis through the cold path (gateway/credits/cold.py),
    2,000 in flight: the rate at which existing users are hydrated."""
    settings = Settings(redis_url=redis_url, database_url=database_url, redis_durability="primary")
    redis = redis_client(settings)
    pool = await db.open_pool(database_url, max_size=4)
    service = make_service(settings, redis, pool, load_tiers(None), system_clock, None)
    gate = asyncio.Semaphore(2000)
    seconds, _ = await redis.time()
    now_ms = int(seconds) * 1000

    async def one(i: int) -> None:
        async with gate:
            await service.hydrate(f"g-{i}", now_ms)

    try:
        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(users)))
        took = time.perf_counter() - t
    finally:
        await redis.aclose()
        await pool.close()
    return {
        "seconds": round(took, 1),
        "users_per_s": round(users / took),
        "statements": service.cold.loads,
    }


def measure(
    database_url: str, redis_url: str, users: int, rows: int, heavy: int, calls: int
) -> dict[str, Any]:
    print(f"cost as data grows: {users:,} users, {rows:,} ledger rows ({heavy:,} of one user)")
    report: dict[str, Any] = {"users": users, "ledger_rows": rows, "heavy_user_rows": heavy}
    report |= asyncio.run(generate(database_url, users, rows, heavy))
    print(f"  {report}", flush=True)
    report["usage"] = asyncio.run(usage_costs(database_url, calls, max(3, calls // 20)))
    report["reconcile"] = reconcile_cost(database_url, redis_url)
    print(f"  reconcile, no user in Redis: {report['reconcile']}", flush=True)
    report["cache_users"] = asyncio.run(cache_users(database_url, redis_url, users))
    print(f"  every user loaded into Redis: {report['cache_users']}", flush=True)
    report["reconcile_cached"] = reconcile_cost(database_url, redis_url)
    print(f"  reconcile, every user in Redis: {report['reconcile_cached']}", flush=True)
    renew_url = database_url.rsplit("/", 1)[0] + "/bench_renew"
    report["renewal"] = asyncio.run(renewal_cost(renew_url, redis_url, users))
    print(f"  renewal: {report['renewal']}", flush=True)
    return report
