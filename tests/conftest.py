"""Fixtures: a private PostgreSQL database (created, migrated, dropped) and a private Redis key
prefix per test, so a developer's running gateway is never touched."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import fakeredis
import httpx
import msgspec
import pytest
import redis as redis_sync
from litestar import Litestar
from redis.asyncio import Redis

from gateway.api.app import create_app
from gateway.base.connect import connect_redis
from gateway.base.settings import Settings
from gateway.credits.clock import Clock, period_end
from gateway.credits.keys import Keys, keys_of
from loadtests.topologies import PrivateCluster, private_cluster
from persistence import db
from persistence.migrate import prepare
from tests.books import assert_books_balance

PG_SERVER = os.environ.get("METERING_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("METERING_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
ADMIN_KEY = "test-admin-key"
BACKENDS = ["single", "cluster"]  # for tests that run on one Redis and on a Redis Cluster

logging.getLogger("httpx").setLevel(logging.WARNING)


class Client(httpx.AsyncClient):
    app: Litestar


class FakeClock:
    """The tests' time: frozen until moved. The gateway turns it into an offset from this
    machine's clock, which its scripts add to Redis's TIME (gateway/credits/clock.py), so Redis
    judges every expiry on real time: nothing Redis expires depends on where this clock stands."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)

    def next_period(self, **after: float) -> datetime:
        """Move to the start of the next calendar month (plus `after`); returns where."""
        self.now = period_end(self.now) + timedelta(**after)
        return self.now


def _last_second(t: datetime) -> datetime:
    return t - timedelta(seconds=1)


# Where the tests' clock starts, relative to the real date (the suite must pass on any date):
# METERING_TEST_START picks one; CI runs the time-dependent tests at each (Makefile).
START_POINTS: dict[str, Callable[[datetime], datetime]] = {
    "now": lambda real: real,
    "year-ago": lambda real: real - timedelta(days=365),
    "year-ahead": lambda real: real + timedelta(days=365),
    "month-end": lambda real: _last_second(period_end(real)),  # the month's last second
    "new-year": lambda real: datetime(real.year + 1, 1, 1, tzinfo=UTC) - timedelta(seconds=1),
    "leap-day": lambda _: datetime(2028, 2, 29, 23, 59, 59, tzinfo=UTC),  # then 1 March 2028
}
START = os.environ.get("METERING_TEST_START", "now")
if START not in START_POINTS:
    raise SystemExit(f"METERING_TEST_START={START!r}: one of {', '.join(START_POINTS)}")


def start_time() -> datetime:
    return START_POINTS[START](datetime.now(UTC)).replace(microsecond=0)


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    url = f"{PG_SERVER}/metering_test_{uuid.uuid4().hex[:10]}"
    await prepare(url)
    yield url
    await db.drop_database(url)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.open_pool(database_url, max_size=10)
    await pool.execute(
        "TRUNCATE credit_transactions, user_credits, api_keys, model_pricing, audit_log, "
        "coupon_redemptions, coupons, webhook_outbox, credit_grants, redis_resyncs, "
        "usage_summaries, ledger_totals"
    )
    yield pool
    await pool.close()


@pytest.fixture
def prefix() -> Iterator[str]:
    """This test's Redis key prefix; whatever the test left under it is deleted afterwards."""
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    client = redis_sync.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{name}:*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def cluster() -> Iterator[PrivateCluster]:
    """A Redis Cluster of 3 masters of the test session's own, started when a test needs it."""
    with private_cluster(3) as running:
        yield running


@pytest.fixture
def redis_backend(request: pytest.FixtureRequest) -> str:
    """'single' (the shared Redis, db 9) unless a test is parametrized with 'cluster':
    ``@pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)``."""
    return str(getattr(request, "param", "single"))


@pytest.fixture
def redis_url(redis_backend: str, request: pytest.FixtureRequest) -> str:
    if redis_backend == "cluster":
        return str(request.getfixturevalue("cluster").url)
    return REDIS_URL


@pytest.fixture
async def redis(prefix: str, redis_url: str) -> AsyncIterator[Redis]:
    client = connect_redis(redis_url, 5.0)
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start_time())


@pytest.fixture
def settings(database_url: str, prefix: str, redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        admin_key=ADMIN_KEY,
        flush_interval=0,
        renew_cron="off",
        key_prefix=prefix,
        shards=4,
        auth_cache_ttl=0.5,
        # the tests' cluster has no replicas to wait for (tests/test_durability.py and
        # tests/faults/test_failover.py test replica mode)
        redis_durability="primary",
    )


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return keys_of(settings)


@pytest.fixture
async def client(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool, redis: Redis
) -> AsyncIterator[Client]:
    """The app in this test's event loop (lifespan included), driven through httpx."""
    async with gateway(settings, clock) as c:
        yield c
        # every test ends with the books straight: after a flush, PostgreSQL = Redis
        await c.app.state.services.flusher.flush()
        await assert_books_balance(pool, redis, keys_of(settings))


@asynccontextmanager
async def gateway(settings: Settings, clock: Clock, **overrides: Any) -> AsyncIterator[Client]:
    """A running app built from settings (with overrides), and an admin client for it."""
    app = create_app(msgspec.structs.replace(settings, **overrides), clock=clock)
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with Client(transport=transport, base_url="http://gateway") as c:
            c.app = app
            c.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
            yield c


@asynccontextmanager
async def running(app: Litestar) -> AsyncIterator[None]:
    """Run the app's lifespan in a task of its own (anyio scopes must exit where they began)."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(lifespan())
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        try:
            task.result()  # startup failed: raise its error
        except BaseExceptionGroup as group:  # anyio wraps it; one error is the usual case
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    try:
        yield
    finally:
        stop.set()
        await task


@pytest.fixture(params=["fakeredis", "redis"])
def r(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A synchronous client for unit tests of the Lua scripts: fakeredis, and the real Redis
    (keys under 'ts' deleted afterwards)."""
    if request.param == "fakeredis":
        yield fakeredis.FakeRedis(decode_responses=True)
        return
    client = redis_sync.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    for key in client.scan_iter(match="ts*"):
        client.delete(key)
    client.close()


@pytest.fixture
def anyio_backend() -> Iterator[str]:
    yield "asyncio"
