"""Fault injection with private Redis, PostgreSQL and real `metering serve` processes under load.

Each test breaks something, then checks the books (tests/faults/harness.py). The figures of
each run are written to build/reliability.json; docs/reliability.md reports them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.credits.keys import Keys
from loadtests.servers import GatewayProcess, PrivatePostgres, PrivateRedis
from tests.faults.harness import (
    Books,
    Load,
    check_books,
    debit_key,
    hydrate_users,
    migrate_database,
)

pytestmark = pytest.mark.faults

ADMIN = "fault-admin-key"
PREFIX = "m"
SHARDS = 4
PG_DOWN_SECONDS = float(os.environ.get("METERING_FAULT_PG_DOWN_SECONDS", "30"))
RESULTS: list[dict[str, Any]] = []
REPORT = Path(__file__).resolve().parents[2] / "build" / "reliability.json"


class Stack:
    def __init__(self, aof: bool = False, flush_interval: str = "0.5") -> None:
        self.pg = PrivatePostgres()
        self.pg.start()
        self.redis = PrivateRedis(aof=aof)
        self.redis.start()
        self.database = f"{self.pg.server}/metering"
        migrate_database(self.database)
        self.gateway = GatewayProcess(
            {
                "METERING_DATABASE_URL": self.database,
                "METERING_REDIS_URL": self.redis.url,
                "METERING_ADMIN_KEY": ADMIN,
                "METERING_FLUSH_INTERVAL": flush_interval,
                "METERING_SHARDS": str(SHARDS),
                "METERING_REDIS_TIMEOUT": "0.5",
                "METERING_RENEW_CRON": "off",
            }
        )
        self.gateway.start()
        self.keys = Keys(PREFIX, SHARDS)

    def debit_key(self) -> str:
        return debit_key(self.gateway.url, ADMIN)

    def books(self, debits: list[Any]) -> Books:
        return check_books(debits, self.database, self.redis.url, self.keys)

    def close(self) -> None:
        self.gateway.stop()
        self.redis.close()
        self.pg.close()


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    yield s
    s.close()


@pytest.fixture
def aof_stack() -> Iterator[Stack]:
    s = Stack(aof=True)
    yield s
    s.close()


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(RESULTS, indent=2))


def record(fault: str, books: Books, **extra: Any) -> None:
    RESULTS.append({"fault": fault, **{k: getattr(books, k) for k in books.__slots__}, **extra})


def warm_users(stack: Stack, key: str, n: int = 20) -> list[str]:
    users = [f"warm-{i}" for i in range(n)]
    hydrate_users(stack.gateway.url, key, users)
    return users


def test_postgres_down_under_load(stack: Stack) -> None:
    key = stack.debit_key()
    load = Load(stack.gateway.url, key, warm_users(stack, key)).start()
    time.sleep(2)
    stack.pg.stop("fast")
    down_at = time.monotonic()
    time.sleep(min(2.0, PG_DOWN_SECONDS))
    # users Redis does not know cannot be loaded: a clear 503, not a hang
    cold: list[tuple[int, float]] = []
    with httpx.Client(
        base_url=stack.gateway.url, timeout=10, headers={"Authorization": f"Bearer {key}"}
    ) as c:
        for i in range(10):
            t = time.monotonic()
            r = c.post(
                "/api/v1/credits/debit",
                json={"user_id": f"cold-{i}", "amount": "1", "request_id": "x"},
            )
            cold.append((r.status_code, time.monotonic() - t))
            assert "PostgreSQL" in r.json()["detail"]
    time.sleep(max(0.0, PG_DOWN_SECONDS - (time.monotonic() - down_at)))
    up_at = time.monotonic()
    stack.pg.start()
    time.sleep(8)  # the flusher backs off at most 5 s, then catches up
    debits = load.stop()
    during = [d for d in debits if down_at <= d.sent_at < up_at]
    assert during and Counter(d.first for d in during) == {200: len(during)}
    assert Counter(code for code, _ in cold) == {503: 10}
    books = stack.books(debits)
    record(
        "PostgreSQL stopped under load",
        books,
        seconds_down=PG_DOWN_SECONDS,
        debits_during_outage=len(during),
        cold_user_answers=dict(Counter(c for c, _ in cold)),
        cold_user_max_ms=round(max(t for _, t in cold) * 1000, 1),
    )
    books.assert_straight()


def test_gateway_killed_under_load_then_restarted(stack: Stack) -> None:
    key = stack.debit_key()
    load = Load(stack.gateway.url, key, warm_users(stack, key)).start()
    time.sleep(3)
    stack.gateway.kill()  # SIGKILL, workers included: in-flight requests get no answer
    time.sleep(1)
    stack.gateway.start()
    time.sleep(3)
    debits = load.stop()
    books = stack.books(debits)
    record("gateway SIGKILL under load, restarted", books)
    books.assert_straight()


KILL_INSIDE_FLUSH = """
import asyncio, os, signal, sys
from redis.asyncio import Redis
from gateway.flusher.flush import Flusher
from gateway.credits.keys import Keys
from persistence import db

async def main():
    redis = Redis.from_url(sys.argv[2], decode_responses=True)
    pool = await db.open_pool(sys.argv[1], max_size=2)
    flusher = Flusher(redis, pool, Keys("m", int(sys.argv[3])), 5000)
    async def die(*_):  # after the PostgreSQL commit, before XTRIM
        os.kill(os.getpid(), signal.SIGKILL)
    flusher.acknowledge = die
    await flusher.flush()

asyncio.run(main())
"""


def test_flusher_killed_between_commit_and_acknowledge() -> None:
    stack = Stack(flush_interval="0")  # no background flusher: this test flushes itself
    try:
        key = stack.debit_key()
        load = Load(stack.gateway.url, key, warm_users(stack, key)).start()
        time.sleep(3)
        debits = load.stop()
        proc = subprocess.run(
            [sys.executable, "-c", KILL_INSIDE_FLUSH, stack.database, stack.redis.url, str(SHARDS)],
            capture_output=True,
            timeout=60,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        r = redis.Redis.from_url(stack.redis.url)
        unacknowledged = sum(int(r.xlen(s)) for s in stack.keys.all_streams())
        r.close()
        assert unacknowledged > 0  # committed to PostgreSQL, still in Redis
        books = stack.books(debits)  # the next flush re-reads them: no double count
        record(
            "flusher SIGKILLed between PostgreSQL commit and Redis XTRIM",
            books,
            events_committed_not_acknowledged=unacknowledged,
        )
        books.assert_straight()
    finally:
        stack.close()


def test_redis_crash_with_aof_recovers(aof_stack: Stack) -> None:
    stack = aof_stack
    key = stack.debit_key()
    load = Load(stack.gateway.url, key, warm_users(stack, key)).start()
    time.sleep(2)
    stack.redis.stop(signal.SIGKILL)
    time.sleep(3)
    stack.redis.start()  # replays its append-only file
    time.sleep(3)
    debits = load.stop()
    books = stack.books(debits)
    record("Redis SIGKILLed under load, restarted from AOF (appendfsync always)", books)
    books.assert_straight()


def test_redis_slow_requests_fail_fast_and_recover(stack: Stack) -> None:
    key = stack.debit_key()
    load = Load(stack.gateway.url, key, warm_users(stack, key)).start()
    time.sleep(2)
    r = redis.Redis.from_url(stack.redis.url)
    r.execute_command("DEBUG", "SLEEP", "3")  # Redis answers nothing for 3 s
    r.close()
    time.sleep(3)
    debits = load.stop()
    books = stack.books(debits)
    record("Redis stalled 3 s under load (DEBUG SLEEP)", books)
    assert books.first_answers.get("503", 0) > 0
    books.assert_straight()


def test_redis_emptied_rehydrates_from_postgres(stack: Stack) -> None:
    key = stack.debit_key()
    users = warm_users(stack, key)
    load = Load(stack.gateway.url, key, users).start()
    time.sleep(2)
    first = load.stop()
    time.sleep(1.5)  # let the background flusher hand everything to PostgreSQL
    r = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    assert sum(int(r.xlen(s)) for s in stack.keys.all_streams()) == 0
    r.flushall()  # as a new, empty Redis
    r.close()
    load2 = Load(stack.gateway.url, key, users).start()
    time.sleep(2)
    second = load2.stop()
    with httpx.Client(
        base_url=stack.gateway.url, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as c:
        bal = c.get("/api/v1/credits/balance", params={"user_id": users[0]}).json()
    spent = sum(1 for d in first + second if d.user == users[0] and d.final == 200)
    assert bal["credits_remaining"] == f"{5 - spent * 0.0001:.6f}"  # not a fresh 5.00
    time.sleep(1.5)
    assert "Redis has lost its data" in stack.gateway.log.read_text()
    books = stack.books(first + second)
    record("Redis emptied (FLUSHALL) after a flush, under load before and after", books)
    books.assert_straight()
