"""Two `metering serve` processes on one Redis and PostgreSQL whose clocks are 2 s apart (the
second under `faketime -f '+2s'`): holds settle exactly once, expiry is the same for both, and
a month boundary crossed by both at once renews each user once. Both run at the same
METERING_CLOCK_OFFSET, which puts the boundary a few seconds after they start."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
import redis as redis_sync

from gateway.credits.clock import period_end
from gateway.credits.keys import Keys
from loadtests.servers import GatewayProcess
from persistence import db
from tests.books import assert_books_balance
from tests.conftest import ADMIN_KEY, PG_SERVER, REDIS_URL
from tests.faults.harness import migrate_database

pytestmark = pytest.mark.skipif(shutil.which("faketime") is None, reason="needs faketime")

AHEAD = 25.0  # seconds from the processes' launch to the month boundary (on the one clock)
RES = "/api/v1/credits/reservations"


def _env(database: str, prefix: str, offset: float) -> dict[str, str]:
    return {
        "METERING_DATABASE_URL": database,
        "METERING_REDIS_URL": REDIS_URL,
        "METERING_ADMIN_KEY": ADMIN_KEY,
        "METERING_KEY_PREFIX": prefix,
        "METERING_RENEW_CRON": "off",
        "METERING_FLUSH_INTERVAL": "0.2",
        "METERING_CLOCK_OFFSET": f"{offset:.3f}",
    }


class Api:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
        )

    def post(self, path: str, **body: Any) -> httpx.Response:
        return self.http.post(path, json=body)

    def balance(self, user: str) -> dict[str, str]:
        r = self.http.get("/api/v1/credits/balance", params={"user_id": user})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def reserve(self, user: str, amount: str, rid: str, ttl: int = 1) -> str:
        r = self.post(RES, user_id=user, amount=amount, request_id=rid, ttl_seconds=ttl)
        assert r.status_code == 201, r.text
        return str(r.json()["reservation_id"])


def test_two_instances_with_clocks_2s_apart_agree_on_every_expiry_and_boundary() -> None:
    database = f"{PG_SERVER}/metering_skew_{uuid.uuid4().hex[:8]}"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    migrate_database(database)
    now = datetime.now(UTC)
    boundary_real = time.time() + AHEAD  # this machine's time when the boundary comes
    offset = (period_end(now) - now).total_seconds() - AHEAD
    slow = GatewayProcess(_env(database, prefix, offset))
    fast = GatewayProcess(_env(database, prefix, offset), wrapper=["faketime", "-f", "+2s"])
    try:
        with ThreadPoolExecutor(2) as starting:
            list(starting.map(lambda p: p.start(), (slow, fast)))
        a, b = Api(slow.url), Api(fast.url)
        assert 0.9 < _skew(b) - _skew(a) < 3.1  # the fast instance's own clock is 2 s ahead

        # 1. reserve on the slow one, read on the fast one, commit on the slow one
        res = a.reserve("h", "1", "r1")
        held = b.balance("h")
        assert held["credits_held"] == "1.000000", held  # not expired for the fast one
        done = a.post(f"{RES}/{res}/commit", amount="0.5")
        assert done.status_code == 200, done.text
        bal = b.balance("h")
        assert bal["credits_held"] == "0.000000" and bal["credits_remaining"] == "4.500000"
        assert (
            b.post("/api/v1/credits/debit", user_id="h", amount="5", request_id="x").status_code
            == 402
        )

        # 2. a hold left to expire is expired for both, and returned once
        res = b.reserve("e", "1", "r2")
        time.sleep(1.3)
        late = a.post(f"{RES}/{res}/commit", amount="0.5")
        assert late.status_code == 409 and "expired" in late.json()["detail"]
        assert b.http.delete(f"{RES}/{res}").json()["status"] == "expired"
        bal = a.balance("e")
        assert bal["credits_held"] == "0.000000" and bal["credits_remaining"] == "5.000000"

        # 3. many holds on both, half committed on the other instance, the rest left to
        #    expire while both read the user
        apis = [a, b]

        def hold_and_maybe_commit(i: int) -> int:
            res = apis[i % 2].reserve("c", "0.1", f"c{i}")
            if i % 2:
                return apis[(i + 1) % 2].post(f"{RES}/{res}/commit", amount="0.05").status_code
            apis[(i + 1) % 2].balance("c")
            return 0

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(hold_and_maybe_commit, range(30)))
        assert Counter(codes) == {0: 15, 200: 15}
        time.sleep(1.3)
        for api in apis:
            bal = api.balance("c")
            assert bal["credits_held"] == "0.000000" and bal["credits_remaining"] == "4.250000"

        # 4. the month boundary, crossed by both at once with debits; an admin reset right
        #    after it from the instance whose own clock is behind
        users = [f"m{i}" for i in range(6)]
        for i, user in enumerate(users):
            assert (
                apis[i % 2]
                .post("/api/v1/credits/debit", user_id=user, amount="0.01", request_id="before")
                .is_success
            )
        wait = boundary_real - 1.0 - time.time()
        assert wait > 0, f"the processes took too long to start ({-wait:.1f} s late)"
        time.sleep(wait)
        stop = boundary_real + 1.5

        def debit_across(i: int) -> list[int]:
            codes, n = [], 0
            while time.time() < stop:
                r = apis[(i + n) % 2].post(
                    "/api/v1/credits/debit",
                    user_id=users[i % len(users)],
                    amount="0.01",
                    request_id=f"d{i}-{n}",
                )
                codes.append(r.status_code)
                n += 1
            return codes

        with ThreadPoolExecutor(6) as pool:
            across = pool.map(debit_across, range(6))
            time.sleep(max(0.0, boundary_real + 0.3 - time.time()))
            reset = a.post("/api/v1/credits/m0/reset", request_id="admin-after")
            codes = [c for cs in across for c in cs]
        assert reset.status_code == 200, reset.text
        assert set(codes) == {200} and len(codes) > 20
    finally:
        for process in (slow, fast):
            process.stop()
    asyncio.run(_check_books(database, prefix, offset))


def _skew(api: Api) -> float:
    """How far the instance's own clock is ahead of this machine's, from its Date header
    (whole seconds, so within a second)."""
    before = time.time()
    r = api.http.get("/health/live")
    return parsedate_to_datetime(r.headers["date"]).timestamp() - before


async def _check_books(database: str, prefix: str, offset: float) -> None:
    from redis.asyncio import Redis

    from gateway.flusher.flush import Flusher

    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    pool = await db.open_pool(database, max_size=2)
    keys = Keys(prefix, 16)
    try:
        await Flusher(redis, pool, keys, 5000).flush()
        boundary = period_end(datetime.now(UTC) + timedelta(seconds=offset) - timedelta(minutes=1))
        resets = await pool.fetch(
            "SELECT user_id, request_id FROM credit_transactions "
            "WHERE transaction_type = 'monthly_reset' ORDER BY user_id, redis_version"
        )
        renewals = Counter(r["user_id"] for r in resets if r["request_id"].startswith("sys:"))
        assert renewals == {f"m{i}": 1 for i in range(6)}  # each user renewed once
        assert {r["request_id"] for r in resets if r["request_id"].startswith("sys:")} == {
            f"sys:reset:{int(boundary.timestamp())}"
        }
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM credit_transactions WHERE request_id LIKE 'sys:reused:%'"
            )
            == 0
        )
        assert await assert_books_balance(pool, redis, keys) >= 9
    finally:
        client = redis_sync.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        client.close()
        await redis.aclose()
        await pool.close()
        await db.drop_database(database)
