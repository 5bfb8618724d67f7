"""What a debit costs in process, without HTTP: a known user's against a new user's first (the
miss, the creation in PostgreSQL, the hydrate, the debit again), on a private Redis and
PostgreSQL (fsync off: the figure is the gateway's CPU, not the disk's). Rounds alternate known
and new, and each prints the process's CPU and wall time per debit; the medians close.

    python -m loadtests.cold_cost [--debits 20000] [--in-flight 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from decimal import Decimal

from gateway.base.settings import Settings
from gateway.credits.clock import system_clock
from gateway.credits.schemas import DebitRequest
from gateway.credits.service import CreditService
from gateway.credits.tiers import load_tiers
from gateway.flusher.background import make_service, redis_client
from loadtests.servers import PrivatePostgres, PrivateRedis
from persistence import db
from persistence.migrate import prepare


async def _debits(service: CreditService, users: list[str], in_flight: int) -> None:
    """One debit for each of users, in_flight worker loops taking them in turn."""
    todo = iter(enumerate(users))

    async def worker() -> None:
        for i, user in todo:
            req = DebitRequest(user_id=user, request_id=f"c-{i}-{user}", amount=Decimal("0.01"))
            await service.debit(req)

    await asyncio.gather(*(worker() for _ in range(in_flight)))


async def measure(database: str, redis_url: str, debits: int, in_flight: int, rounds: int) -> None:
    settings = Settings(redis_url=redis_url, database_url=database, redis_durability="primary")
    redis = redis_client(settings)
    pool = await db.open_pool(database, max_size=4)
    service = make_service(settings, redis, pool, load_tiers(None), system_clock, None)
    known = [f"known-{i}" for i in range(debits)]
    try:
        await _debits(service, known, in_flight)  # created and hydrated: known from now on
        figures: dict[str, list[tuple[float, float]]] = {"known": [], "new": []}
        for n in range(rounds):
            for kind in ("known", "new"):
                users = known if kind == "known" else [f"new-{n}-{i}" for i in range(debits)]
                for stream in service.keys.all_streams():  # room for the round's events
                    await redis.xtrim(stream, maxlen=0)
                # statistics as a running database has them: on a table grown from empty
                # faster than autovacuum looks, the lookup of existing rows by a generic plan
                # is a sequential scan, and the round measures that instead
                await pool.execute("ANALYZE user_credits, credit_grants")
                cpu, wall = time.process_time(), time.perf_counter()
                await _debits(service, users, in_flight)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                per = (cpu / debits * 1e6, wall / debits * 1e6)
                figures[kind].append(per)
                print(f"round {n + 1} {kind:5}: {per[0]:6.1f} µs CPU, {per[1]:6.1f} µs wall")
        for kind, runs in figures.items():
            cpu = statistics.median(c for c, _ in runs)
            wall = statistics.median(w for _, w in runs)
            print(f"median {kind:5}: {cpu:6.1f} µs CPU, {wall:6.1f} µs wall a debit")
    finally:
        await redis.aclose()
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--debits", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pg, redis = PrivatePostgres(), PrivateRedis()
    pg.start()
    redis.start()
    try:
        database = f"{pg.server}/metering"
        asyncio.run(prepare(database))
        asyncio.run(measure(database, redis.url, args.debits, args.in_flight, args.rounds))
    finally:
        redis.close()
        pg.close()


if __name__ == "__main__":
    main()
