"""The renewal cron as data grows (docs/performance.md "Renewal"): idle users generated directly
in PostgreSQL, all due (their period began last month) and none in Redis, so each is loaded and
renewed; then the flush of its events. And the hot path beside it: a paced load of known users
on a gateway process, its p50/p99 before the renewal and while it runs, in the same run.

    python -m loadtests.bench.renewal --users 1050000 [--rate 2000] [--skip-load]

Nothing asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import redis as redis_sync

from gateway.base.settings import Settings
from gateway.credits.clock import system_clock
from gateway.credits.renewal import renew_idle
from gateway.credits.service import CreditService
from gateway.credits.tiers import load_tiers
from gateway.flusher.background import make_flusher, make_service, redis_client
from gateway.flusher.flush import Flusher
from loadtests.bench.drain import prepare_database
from loadtests.bench.runners import paced_rate, wrk
from loadtests.bench.scenarios import ADMIN, USERS
from loadtests.servers import PrivatePostgres, PrivateRedis, ServerProcess
from persistence import db
from persistence.migrate import prepare

PREFIX = "renew"  # the renewal's keys, apart from anything else in the private Redis
# idle users PostgreSQL shows renewed for the period holding $1 (the default, a month)
RENEWED = (
    "SELECT count(*) FROM user_credits WHERE user_id LIKE 'idle-%' "
    "AND last_reset >= date_trunc('month', $1::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
)


async def idle_users(database_url: str, users: int) -> None:
    """`users` rows renewed last month, each with the allocation that made its balance."""
    await prepare(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO user_credits (user_id, credits_remaining, credits_allocated, tier, "
            "last_reset) SELECT 'idle-' || i, 5, 5, 'free', "
            "date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '1 month' "
            "FROM generate_series(0, $1 - 1) i",
            users,
        )
        await conn.execute(
            "INSERT INTO credit_transactions (id, user_id, transaction_type, amount, "
            "balance_after, request_id, created_at) SELECT gen_random_uuid(), user_id, "
            "'allocation', 5, 5, 'sys:create', last_reset FROM user_credits "
            "WHERE user_id LIKE 'idle-%'"
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def _settings(database_url: str, redis_url: str, users: int) -> Settings:
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        key_prefix=PREFIX,
        redis_durability="primary",
        max_backlog=users + 1,  # the drain is measured after: let every event wait for it
    )


@asynccontextmanager
async def _cron(
    database_url: str, redis_url: str, users: int
) -> AsyncIterator[tuple[CreditService, Flusher]]:
    """The service renew_idle runs on and a flusher, as the background process makes them."""
    settings = _settings(database_url, redis_url, users)
    redis = redis_client(settings)
    pool = await db.open_pool(database_url, max_size=4)
    tiers = load_tiers(settings.tiers_file)
    try:
        yield (
            make_service(settings, redis, pool, tiers, system_clock, None),
            make_flusher(settings, redis, pool, tiers, None),
        )
    finally:
        await redis.aclose()
        await pool.close()


async def renewal_cost(database_url: str, redis_url: str, users: int) -> dict[str, Any]:
    """One renew_idle as the cron runs it, timed, then the flush that drains its events."""
    await idle_users(database_url, users)
    async with _cron(database_url, redis_url, users) as (service, flusher):
        t = time.perf_counter()
        renewed = await renew_idle(service)
        renew_s = time.perf_counter() - t
        t = time.perf_counter()
        stats = await flusher.flush()
        drain_s = time.perf_counter() - t
    return {
        "users": users,
        "renewed": renewed,
        "renew_s": round(renew_s, 2),
        "users_per_s": round(renewed / renew_s),
        "drain_s": round(drain_s, 2),
        "drained_events": stats.events,
        "drain_events_per_s": round(stats.events / drain_s),
    }


async def _renew_and_drain(
    database_url: str, redis_url: str, users: int, **sweep: float
) -> dict[str, float]:
    """renew_idle, timed, then how long the gateway's own flusher takes to drain the rest."""
    async with _cron(database_url, redis_url, users) as (service, _):
        t = time.perf_counter()
        renewed = await renew_idle(
            service,
            per_call=int(sweep["per_call"]),
            in_flight=int(sweep["in_flight"]),
            rate=sweep.get("renew_rate", 0.0),
        )
        renew_s = time.perf_counter() - t
        # the hot path keeps adding events: drained when PostgreSQL shows every renewal
        while await service.pool.fetchval(RENEWED, await service.now()) < renewed:
            await asyncio.sleep(0.2)
        return {
            "renewed": renewed,
            "renew_s": round(renew_s, 2),
            "drained_after_s": round(time.perf_counter() - t - renew_s, 1),
        }


def renewal_under_load(
    database_url: str, redis_url: str, users: int, rate: float, connections: int, **sweep: float
) -> dict[str, Any]:
    """A gateway process (its flusher inside, as deployed) under `rate` debits/s of 1,000 known
    users: wrk's p50/p99 over 10 s before the renewal, then in 5-second windows while the
    renewal of `users` idle users runs in this process and until its events are drained."""
    asyncio.run(prepare_database(database_url, USERS))
    asyncio.run(idle_users(database_url, users))
    env = {
        "METERING_DATABASE_URL": database_url,
        "METERING_REDIS_URL": redis_url,
        "METERING_REDIS_DURABILITY": "primary",
        "METERING_ADMIN_KEY": ADMIN,
        "METERING_RENEW_CRON": "off",
        "METERING_KEY_PREFIX": PREFIX,
        "METERING_MAX_BACKLOG": str(users + 1),
    }
    server = ServerProcess(
        [sys.executable, "-m", "gateway.ops.cli", "serve", "--workers", "1"], env
    )
    server.start()
    try:
        url = f"{server.url}/api/v1/credits/debit"
        load = {"KEY": ADMIN, "USERS": str(USERS), "PREFIX": "bench"}
        wrk(url, 2, connections, load)  # every known user loaded into Redis
        load |= paced_rate(url, argparse.Namespace(connections=connections), load, rate)
        before = wrk(url, 10, connections, load)
        during: list[dict[str, object]] = []
        done = threading.Event()

        def windows() -> None:
            while not done.is_set():
                during.append(wrk(url, 5, connections, load))

        watcher = threading.Thread(target=windows)
        watcher.start()
        try:
            renewal = asyncio.run(_renew_and_drain(database_url, redis_url, users, **sweep))
        finally:
            done.set()
            watcher.join()
    finally:
        server.stop()
    p99s = [float(w["p99_ms"]) for w in during]  # type: ignore[arg-type]
    return {
        "rate": rate,
        **sweep,
        **renewal,
        "before": {k: before[k] for k in ("p50_ms", "p99_ms", "requests", "errors")},
        "during_windows": len(during),
        "during_p99_ms_median": statistics.median(p99s),
        "during_p99_ms_worst": max(p99s),
        "during_p50_ms_median": statistics.median(float(w["p50_ms"]) for w in during),  # type: ignore[arg-type]
        "during_errors": sum(int(w["errors"]) for w in during),  # type: ignore[call-overload]
        "p99_ratio_median": round(statistics.median(p99s) / float(before["p99_ms"]), 2),  # type: ignore[arg-type]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2000, help="hot-path debits/s")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--skip-load", action="store_true", help="only the renewal alone")
    parser.add_argument("--skip-alone", action="store_true", help="only beside the hot path")
    parser.add_argument("--per-call", type=int, default=100, help="users a script call")
    parser.add_argument("--in-flight", type=int, default=2, help="script calls at once")
    parser.add_argument(
        "--renew-rate", type=float, default=0, help="METERING_RENEW_RATE (users/s; 0: unpaced)"
    )
    args = parser.parse_args()
    pg, rd = PrivatePostgres(durable=True), PrivateRedis()
    pg.start()
    rd.start()
    try:
        if not args.skip_alone:
            alone = asyncio.run(renewal_cost(f"{pg.server}/bench_renew", rd.url, args.users))
            print("renewal alone:", json.dumps(alone), flush=True)
        if not args.skip_load:
            redis_sync.Redis.from_url(rd.url, socket_timeout=300).flushall()  # the same ids
            loaded = renewal_under_load(
                f"{pg.server}/bench_renew_load",
                rd.url,
                args.users,
                args.rate,
                args.connections,
                per_call=args.per_call,
                in_flight=args.in_flight,
                renew_rate=args.renew_rate,
            )
            print("renewal beside the hot path:", json.dumps(loaded), flush=True)
    finally:
        rd.stop()
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
