"""A real `metering serve` process on the shared test servers, with its own database and Redis
key prefix, both removed afterwards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import asyncpg
import redis
import redis.asyncio as aioredis

from gateway.credits.keys import Keys
from loadtests.servers import GatewayProcess
from persistence import db
from tests.conftest import ADMIN_KEY, PG_SERVER, REDIS_URL
from tests.faults.harness import migrate_database


@dataclass(frozen=True)
class Running:
    process: GatewayProcess
    database: str
    prefix: str

    @property
    def url(self) -> str:
        return self.process.url


@contextmanager
def sibling(first: Running, **env: str) -> Iterator[GatewayProcess]:
    """A second `metering serve` on the first one's database and key prefix (the same Redis),
    started, stopped afterwards."""
    process = GatewayProcess(
        {
            "METERING_DATABASE_URL": first.database,
            "METERING_REDIS_URL": REDIS_URL,
            "METERING_ADMIN_KEY": ADMIN_KEY,
            "METERING_KEY_PREFIX": first.prefix,
            "METERING_RENEW_CRON": "off",
            **env,
        }
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@asynccontextmanager
async def flushed(first: Running) -> AsyncIterator[tuple[asyncpg.Pool, aioredis.Redis, Keys]]:
    """The instance's PostgreSQL and Redis after a flush of everything waiting: for the checks
    at the end of a test of several processes."""
    from gateway.flusher.flush import Flusher

    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    pool = await db.open_pool(first.database, max_size=2)
    keys = Keys(first.prefix, 16)
    try:
        await Flusher(redis, pool, keys, 5000).flush()
        yield pool, redis, keys
    finally:
        await redis.aclose()
        await pool.close()


@contextmanager
def gateway_process(workers: int = 1, migrate: bool = True, **env: str) -> Iterator[Running]:
    """With migrate=False the database does not exist yet: `metering serve` must create it."""
    database = f"{PG_SERVER}/metering_proc_{uuid.uuid4().hex[:8]}"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    if migrate:
        migrate_database(database)
    process = GatewayProcess(
        {
            "METERING_DATABASE_URL": database,
            "METERING_REDIS_URL": REDIS_URL,
            "METERING_ADMIN_KEY": ADMIN_KEY,
            "METERING_KEY_PREFIX": prefix,
            "METERING_RENEW_CRON": "off",
            **env,
        },
        workers=workers,
    )
    try:
        process.start()
        yield Running(process, database, prefix)
    finally:
        process.stop()
        assert ADMIN_KEY not in process.log.read_text()  # keys never reach the logs
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        client.close()
        asyncio.run(db.drop_database(database))
