"""Periods: renewal at the boundary (expire or roll over), monthly caps, admin resets, idle users.
Time comes from an injected clock (an offset the scripts add to Redis's time), starting where
METERING_TEST_START says; nothing sleeps."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from gateway.base.settings import Settings
from gateway.credits.clock import period_end
from gateway.credits.keys import Keys, keys_of
from gateway.credits.renewal import renew_idle
from tests.books import assert_books_balance
from tests.conftest import BACKENDS, Client, FakeClock, gateway, start_time

# on one Redis and on a Redis Cluster of 3 masters
pytestmark = pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)

TIERS = """
default_tier = "capped"
[tiers.capped]
allocation = "5"
monthly_cap = "1"
[tiers.saver]
allocation = "2"
rollover = true
[tiers.bounded]
allocation = "2"
rollover = true
max_rollover = "3"
[tiers.trial]
allocation = "5"
"""


@pytest.fixture
async def gw(
    tmp_path: Path, settings: Settings, clock: FakeClock, pool: asyncpg.Pool, redis: Redis
) -> AsyncIterator[Client]:
    path = tmp_path / "tiers.toml"
    path.write_text(TIERS)
    async with gateway(settings, clock, tiers_file=str(path)) as c:
        yield c
        await c.app.state.services.flusher.flush()
        await assert_books_balance(pool, redis, keys_of(settings))


async def debit(c: Client, user: str, amount: str, rid: str) -> httpx.Response:
    return await c.post(
        "/api/v1/credits/debit", json={"user_id": user, "amount": amount, "request_id": rid}
    )


async def balance(c: Client, user: str) -> dict[str, str]:
    r = await c.get("/api/v1/credits/balance", params={"user_id": user})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_new_month_renews_and_unused_credits_expire(
    gw: Client, clock: FakeClock, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    await gw.put("/api/v1/credits/u/tier", json={"tier": "trial"})
    assert (await debit(gw, "u", "1.5", "nov")).json()["credits_remaining"] == "3.500000"
    nxt = clock.next_period(hours=3) - timedelta(hours=3)
    bal = await balance(gw, "u")
    assert bal["credits_remaining"] == "5.000000" and bal["period_spent"] == "0.000000"
    assert bal["last_reset"] == nxt.isoformat()
    assert (await debit(gw, "u", "1", "dec")).json()["credits_remaining"] == "4.000000"
    await gw.app.state.services.flusher.flush()
    row = await pool.fetchrow("SELECT * FROM user_credits WHERE user_id = 'u'")
    assert row["last_reset"] == nxt and row["period_spent"] == 1
    resets = await pool.fetch(
        "SELECT amount, request_id FROM credit_transactions "
        "WHERE user_id = 'u' AND transaction_type = 'monthly_reset'"
    )
    assert [(r["amount"], r["request_id"]) for r in resets] == [
        (Decimal("1.5"), f"sys:reset:{int(nxt.timestamp())}")
    ]
    await assert_books_balance(pool, redis, keys)


async def test_rollover_tier_carries_unused_credits(
    gw: Client, clock: FakeClock, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    await gw.put("/api/v1/credits/s/tier", json={"tier": "saver"})
    assert (await balance(gw, "s"))["credits_remaining"] == "2.000000"
    await debit(gw, "s", "0.5", "a")
    clock.next_period()
    assert (await balance(gw, "s"))["credits_remaining"] == "3.500000"  # 1.5 left + 2
    await gw.app.state.services.flusher.flush()
    await assert_books_balance(pool, redis, keys)


async def test_rollover_respects_max_rollover_and_the_ledger_shows_what_expired(
    gw: Client, clock: FakeClock, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    """max_rollover = 3: unused allocation (2.00 a period, none spent) rolls over until the
    rollover block holds 3.00; the rest of each closing allocation expires, as the renewal's
    draws say. Purchases are untouched throughout."""
    await gw.put("/api/v1/credits/b/tier", json={"tier": "bounded"})
    await gw.post(
        "/api/v1/credits/grant",
        json={"user_id": "b", "amount": "10", "request_id": "buy", "kind": "purchase"},
    )
    seen = []
    for _ in range(3):
        clock.next_period(seconds=1)
        seen.append((await balance(gw, "b"))["credits_remaining"])
    # rollover 2 (+2 new), then 3 (1 of 2 rolled, 1 expired), then 3 (2 expired): + 10 bought
    assert seen == ["14.000000", "15.000000", "15.000000"]
    await gw.app.state.services.flusher.flush()
    rows = await pool.fetch(
        "SELECT amount, draws FROM credit_transactions WHERE user_id = 'b' "
        "AND transaction_type = 'monthly_reset' ORDER BY created_at"
    )
    expired = [sum(int(d.split(":")[1]) for d in (r["draws"] or "").split(",") if d) for r in rows]
    assert expired == [0, 1_000_000, 2_000_000]
    assert [r["amount"] for r in rows] == [2, 1, 0]  # the net change of each renewal
    blocks = await pool.fetch(
        "SELECT kind, remaining FROM credit_grants WHERE user_id = 'b' AND closed_at IS NULL "
        "ORDER BY kind"
    )
    assert [tuple(b) for b in blocks] == [("allocation", 2), ("purchase", 10), ("rollover", 3)]
    tiers = (await gw.get("/api/v1/tiers")).json()["tiers"]
    assert next(t for t in tiers if t["name"] == "bounded")["max_rollover"] == "3.000000"


async def test_monthly_cap_is_402_with_its_reason_and_renews(
    gw: Client, clock: FakeClock, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    assert (await debit(gw, "c", "0.75", "a")).status_code == 200
    r = await debit(gw, "c", "0.5", "b")
    assert r.status_code == 402
    assert r.json()["reason"] == "monthly_cap_reached"
    assert r.json()["credits_remaining"] == "4.250000"
    assert "0.750000 of 1.000000" in r.json()["detail"]
    assert (await debit(gw, "c", "0.25", "c")).status_code == 200  # exactly to the cap
    short = await debit(gw, "c", "100", "d")
    assert short.json()["reason"] == "monthly_cap_reached"
    clock.next_period()
    assert (await debit(gw, "c", "0.5", "e")).json()["credits_remaining"] == "4.500000"
    await gw.app.state.services.flusher.flush()
    await assert_books_balance(pool, redis, keys)


async def test_insufficient_credits_reason(gw: Client) -> None:
    await gw.put("/api/v1/credits/i/tier", json={"tier": "saver"})
    r = await debit(gw, "i", "3", "x")
    assert r.status_code == 402 and r.json()["reason"] == "insufficient_credits"


async def test_cap_holds_under_concurrency(
    gw: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    # 5.00 of credits but a 1.00 cap: exactly 100 debits of 0.01 pass
    results = await asyncio.gather(*(debit(gw, "cc", "0.01", f"r{i}") for i in range(200)))
    assert Counter(r.status_code for r in results) == {200: 100, 402: 100}
    assert {r.json()["reason"] for r in results if r.status_code == 402} == {"monthly_cap_reached"}
    bal = await balance(gw, "cc")
    assert bal["period_spent"] == "1.000000" and bal["credits_remaining"] == "4.000000"
    await gw.app.state.services.flusher.flush()
    await assert_books_balance(pool, redis, keys)


class SwitchingClock(FakeClock):
    """Answers November for the first n reads, December after: requests straddle the boundary."""

    def __init__(self, before: datetime, after: datetime, n: int) -> None:
        super().__init__(before)
        self.after, self.left = after, n

    def __call__(self) -> datetime:
        self.left -= 1
        return self.now if self.left >= 0 else self.after


async def test_100_debits_straddling_the_boundary_reset_once_and_lose_no_spend(
    tmp_path: Path, settings: Settings, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    boundary = period_end(start_time())
    clock = SwitchingClock(boundary - timedelta(minutes=1), boundary, n=52)
    async with gateway(settings, clock) as c:
        await balance(c, "edge")  # created in the month before (reads the clock twice)
        results = await asyncio.gather(*(debit(c, "edge", "0.01", f"r{i}") for i in range(100)))
        assert {r.status_code for r in results} == {200}
        await c.app.state.services.flusher.flush()
    rows = await pool.fetch(
        "SELECT transaction_type, amount, redis_version FROM credit_transactions "
        "WHERE user_id = 'edge' ORDER BY redis_version"
    )
    resets = [r for r in rows if r["transaction_type"] == "monthly_reset"]
    assert len(resets) == 1  # renewed once
    usage = [r for r in rows if r["transaction_type"] == "usage"]
    assert len(usage) == 100  # every debit is in the ledger
    after_reset = [r for r in usage if r["redis_version"] > resets[0]["redis_version"]]
    final = await pool.fetchval("SELECT credits_remaining FROM user_credits WHERE user_id='edge'")
    assert final == Decimal("5") - Decimal("0.01") * len(after_reset)  # no new spend overwritten
    assert 0 < len(after_reset) < 100
    await assert_books_balance(pool, redis, keys)


async def test_admin_reset_is_idempotent(
    gw: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    await debit(gw, "r", "0.5", "a")
    r1 = await gw.post("/api/v1/credits/r/reset", json={"request_id": "reset-1"})
    assert r1.status_code == 200, r1.text
    assert r1.json()["credits_remaining"] == "5.000000" and r1.json()["adjustment"] == "0.500000"
    r2 = await gw.post("/api/v1/credits/r/reset", json={"request_id": "reset-1"})
    assert r2.json() == {**r1.json(), "replayed": True}
    assert (await balance(gw, "r"))["period_spent"] == "0.000000"
    clash = await debit(gw, "r", "1", "reset-1")
    assert clash.status_code == 409
    assert (await gw.post("/api/v1/credits/r/reset", json={})).status_code == 400
    await gw.app.state.services.flusher.flush()
    assert (
        await pool.fetchval("SELECT count(*) FROM credit_transactions WHERE request_id = 'reset-1'")
        == 1
    )
    await assert_books_balance(pool, redis, keys)


async def test_idle_users_are_renewed_by_the_job(
    gw: Client, clock: FakeClock, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    for i in range(7):
        await debit(gw, f"idle{i}", "0.25", "a")
    await gw.app.state.services.flusher.flush()
    await redis.delete(keys.user("idle3"))  # one of them is no longer in Redis
    nxt = clock.next_period(minutes=10) - timedelta(minutes=10)
    service = gw.app.state.services.credits
    assert await renew_idle(service, batch=3) == 7
    assert await renew_idle(service, batch=3) == 0  # keyed by period: once
    await gw.app.state.services.flusher.flush()
    rows = await pool.fetch("SELECT credits_remaining, last_reset, period_spent FROM user_credits")
    assert {(r["credits_remaining"], r["last_reset"], r["period_spent"]) for r in rows} == {
        (Decimal("5"), nxt, Decimal("0"))
    }
    await assert_books_balance(pool, redis, keys)


async def test_cap_position_survives_rehydration(
    gw: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    await debit(gw, "p", "0.9", "a")
    await gw.app.state.services.flusher.flush()
    await redis.delete(keys.user("p"))
    r = await debit(gw, "p", "0.2", "b")
    assert r.status_code == 402 and r.json()["reason"] == "monthly_cap_reached"
