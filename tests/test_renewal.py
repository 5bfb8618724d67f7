"""The renewal cron (gateway/credits/renewal.py): PostgreSQL writes each row as renew_many.lua
loads it (persistence/renewal_queries.py), so a user the cron loads must land in Redis exactly
as the cold path (hydrate.lua with CreditService.hydrate_args) would load it; pages, shards and
calls of many users renew each due user once; a full backlog makes it wait for the flusher, and
give up (503) rather than pass the ceiling. The clock starts where METERING_TEST_START says."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.base.errors import Unavailable
from gateway.base.settings import Settings
from gateway.credits import renewal
from gateway.credits.clock import period_start
from gateway.credits.keys import Keys
from gateway.credits.renewal import _Sweep, renew_idle
from gateway.credits.service import CreditService
from persistence.users import get_user, open_grants
from tests.books import assert_books_balance
from tests.conftest import BACKENDS, Client, FakeClock, gateway
from tests.test_periods import TIERS  # a capped tier, rollover tiers with and without a bound


@pytest.fixture
def tiers(tmp_path: Path) -> str:
    path = tmp_path / "tiers.toml"
    path.write_text(TIERS)
    return str(path)


def _micro(rng: random.Random) -> Decimal:
    return Decimal(rng.randrange(1, 50_000_000)) / 1_000_000


def _between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    """A time in [start, end] to the microsecond."""
    span = int((end - start) / timedelta(microseconds=1))
    return start + timedelta(microseconds=rng.randrange(span + 1))


async def _insert(
    pool: asyncpg.Pool,
    rng: random.Random,
    user: str,
    tier: str,
    reset: datetime | None,
    cap: Decimal | None,
    grants: list[tuple[str, str, int, datetime | None, datetime, bool]],
) -> None:
    """A row written straight into PostgreSQL (an import, or a user long gone from Redis), its
    blocks (id, kind, priority, expiry, created, with amount) summing to its balance, and the
    ledger entry that makes its books balance."""
    parts = [_micro(rng) for _ in grants] or [_micro(rng)]
    balance = sum(parts, Decimal(0))
    await pool.execute(
        "INSERT INTO user_credits (user_id, credits_remaining, credits_allocated, tier, "
        "monthly_cap, last_reset, redis_version, period_spent) VALUES ($1, $2, $3, $4, $5, $6, "
        "$7, $8)",
        user,
        balance,
        _micro(rng),
        tier,
        cap,
        reset,
        rng.randrange(0, 10**6),
        _micro(rng),
    )
    for (gid, kind, prio, exp, created, amount), part in zip(grants, parts, strict=False):
        await pool.execute(
            "INSERT INTO credit_grants (user_id, id, kind, priority, expires_at, created_at, "
            "remaining, amount) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            user,
            gid,
            kind,
            prio,
            exp,
            created,
            part,
            part + 1 if amount else None,
        )
    await pool.execute(
        "INSERT INTO credit_transactions (id, user_id, transaction_type, amount, balance_after, "
        "request_id) VALUES (gen_random_uuid(), $1, 'adjustment', $2, $2, 'import')",
        user,
        balance,
    )


async def _rows_of_every_kind(pool: asyncpg.Pool, now: datetime, began: datetime) -> list[str]:
    """Rows that differ in every field the two loads write, microseconds included."""
    rng = random.Random(now.timestamp())  # varied, and reproducible from the start point
    users: list[str] = []
    tiers = ["capped", "saver", "bounded", "gone-tier"]  # the last is no longer configured
    for n in range(24):
        user = ["u", "Ü-ßer:", "x y\u00e9", "B"][n % 4] + str(n)
        reset = _between(rng, began, now)
        if n % 6 == 0:
            reset = reset.replace(microsecond=0)  # no fraction: isoformat writes none
        if n % 8 == 7:
            reset = None  # never renewed: taken as the current period's start
        grants = []
        for g in range(n % 4):
            # same priority and expiry, ids differing in case: ordered bytewise ('B' < 'a')
            gid = ["a-1", "B-1", "c-2", "A-0"][g] if n % 3 else f"blk{g}"
            exp = None if g == 2 else _between(rng, now + timedelta(days=1), now + timedelta(99))
            created = _between(rng, began - timedelta(days=40), now)
            if n % 5 == 0 and g == 1:  # a tie down to the id
                exp, created = grants[0][3], grants[0][4]
            kind = ["bonus", "purchase", "allocation", "rollover"][g]
            grants.append((gid, kind, [20, 20, 10, 30][g], exp, created, g != 1))
        if reset is None and not any(g[3] for g in grants):
            grants.append(("due-later", "bonus", 20, now + timedelta(days=3), now, True))
        cap = None if n % 2 else _micro(rng)
        await _insert(pool, rng, user, tiers[n % 4], reset, cap, grants)
        users.append(user)
    return users


async def _state(redis: Redis, keys: Keys, users: list[str]) -> dict[str, dict[bytes, bytes]]:
    return {u: await redis.hgetall(keys.user(u)) for u in users}


@pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)
async def test_a_row_the_cron_loads_is_the_state_the_cold_path_loads(
    settings: Settings,
    clock: FakeClock,
    tiers: str,
    pool: asyncpg.Pool,
    redis: Redis,
    keys: Keys,
) -> None:
    """Every user's hash after renew_many.lua loads PostgreSQL's text of its row equals the
    hash hydrate.lua makes from Python's reading of it, field for field."""
    async with gateway(settings, clock, tiers_file=tiers) as gw:
        service: CreditService = gw.app.state.services.credits
        now = await service.now()
        began = period_start(now, service.period)
        users = await _rows_of_every_kind(pool, now, began)
        grants = await open_grants(pool, users)
        for user in users:
            row = await get_user(pool, user)
            assert row is not None
            args = service.hydrate_args(row, now, grants[user])
            assert await service.scripts.hydrate(keys=[keys.user(user)], args=args) == 1
        cold = await _state(redis, keys, users)
        await redis.delete(*(keys.user(u) for u in users))

        # nothing is due (every last renewal is in this period, every expiry ahead), so a
        # sweep asked for every row only loads: 'since' far ahead selects them all
        sweep = _Sweep(service, began, per_call=3, in_flight=2)
        ahead = now + timedelta(days=400)
        by_reset = await sweep.run(False, ahead, batch=5)
        by_expiry = await sweep.run(True, ahead, batch=5)
        assert (by_reset.renewed, by_reset.expired, by_expiry.renewed, by_expiry.expired) == (
            0,
            0,
            0,
            0,
        )
        assert by_reset.loaded + by_expiry.loaded == len(users)
        assert await _state(redis, keys, users) == cold
        assert all(cold.values())
        await gw.app.state.services.flusher.flush()
        await assert_books_balance(pool, redis, keys)


async def _debit(gw: Client, user: str, amount: str, rid: str) -> None:
    r = await gw.post(
        "/api/v1/credits/debit", json={"user_id": user, "amount": amount, "request_id": rid}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)
async def test_every_due_user_of_every_page_and_shard_is_renewed_once(
    settings: Settings,
    clock: FakeClock,
    tiers: str,
    pool: asyncpg.Pool,
    redis: Redis,
    keys: Keys,
) -> None:
    async with gateway(settings, clock, tiers_file=tiers) as gw:
        users = [f"idle-{n}" for n in range(41)]
        for user in users:
            await _debit(gw, user, "0.25", "a")
        await gw.app.state.services.flusher.flush()
        await redis.delete(*(keys.user(u) for u in users[::3]))  # a third loaded from rows
        began = clock.next_period(minutes=10) - timedelta(minutes=10)
        service = gw.app.state.services.credits
        assert await renew_idle(service, batch=7, per_call=2, in_flight=3) == len(users)
        assert await renew_idle(service, batch=7, per_call=2, in_flight=3) == 0
        await gw.app.state.services.flusher.flush()
        rows = await pool.fetch(
            "SELECT credits_remaining, last_reset, period_spent FROM user_credits"
        )
        assert [tuple(r) for r in rows] == [(Decimal(5), began, Decimal(0))] * len(users)
        resets = await pool.fetchval(
            "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'monthly_reset'"
        )
        assert resets == len(users)
        await assert_books_balance(pool, redis, keys)


async def _renew_while_flushing(gw: Client, redis: Redis, keys: Keys, **kw: int) -> tuple[int, int]:
    """renew_idle while the flusher drains shard 0 every 20 ms: users renewed, and the most
    unflushed events the shard was seen holding."""
    run = asyncio.create_task(renew_idle(gw.app.state.services.credits, **kw))
    most = 0
    while not run.done():
        most = max(most, await redis.xlen(keys.stream(0)))
        await asyncio.sleep(0.02)
        await gw.app.state.services.flusher.flush()
    return await run, most


async def test_a_full_backlog_stops_the_calls_until_the_flusher_drains_it(
    settings: Settings,
    clock: FakeClock,
    tiers: str,
    pool: asyncpg.Pool,
    redis: Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shard may hold 10 unflushed events and a user's renewal may write two: the calls (of 3
    users, 2 at once) renew users while there is room, and a run whose calls find no room
    BACKLOG_TRIES times in a row ends with a 503; the next run, while the flusher drains,
    renews the rest. The ceiling is never passed, no user is renewed twice or missed."""
    monkeypatch.setattr(renewal, "BACKLOG_WAIT", 0.01)
    monkeypatch.setattr(renewal, "BACKLOG_TRIES", 3)
    async with gateway(settings, clock, tiers_file=tiers, shards=1, max_backlog=10) as gw:
        users = [f"w{n:02}" for n in range(12)]
        for user in users:
            await _debit(gw, user, "0.5", "a")
            await gw.app.state.services.flusher.flush()
        clock.next_period(minutes=1)
        with pytest.raises(Unavailable):
            await renew_idle(gw.app.state.services.credits, per_call=3)
        assert await redis.xlen(keys.stream(0)) == 9  # 9 renewals, no room for a 10th user
        monkeypatch.setattr(renewal, "BACKLOG_TRIES", 1000)  # a flush comes every 20 ms
        renewed, most = await _renew_while_flushing(gw, redis, keys, per_call=3)
        assert renewed == 3 and most <= 10
        await gw.app.state.services.flusher.flush()
        assert await pool.fetchval(
            "SELECT count(*) FROM user_credits WHERE credits_remaining = 5"
        ) == len(users)
        await assert_books_balance(pool, redis, keys)


async def test_a_paced_run_spaces_its_calls_to_the_rate(
    settings: Settings,
    clock: FakeClock,
    tiers: str,
    pool: asyncpg.Pool,
    redis: Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """METERING_RENEW_RATE: each call waits until the users before it fit the rate (the waits
    are recorded, not slept), and every user is still renewed once."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async with gateway(settings, clock, tiers_file=tiers) as gw:
        users = [f"paced-{n}" for n in range(30)]
        for user in users:
            await _debit(gw, user, "0.25", "a")
        await gw.app.state.services.flusher.flush()
        clock.next_period(minutes=10)
        monkeypatch.setattr(renewal.Pace, "sleep", staticmethod(sleep))
        service = gw.app.state.services.credits
        # 30 users in calls of at most 5 (a shard's users a call), one at a time, 10 a second
        started = time.monotonic()
        assert await renew_idle(service, per_call=5, in_flight=1, rate=10) == len(users)
        took = time.monotonic() - started
        # the first call at once; each later one waits until the users before it fit 10 a
        # second from the first (the recorded waits do not pass, so they only grow): the last
        # comes after at least 25 and at most 29 users
        assert len(waits) >= 5 and waits == sorted(waits), waits
        assert 2.5 - took <= waits[-1] <= 2.9, (waits, took)
        waits.clear()
        assert await renew_idle(service, per_call=5, in_flight=1, rate=0) == 0  # no pace
        assert waits == []
        await gw.app.state.services.flusher.flush()
        rows = await pool.fetch("SELECT credits_remaining FROM user_credits")
        assert [r[0] for r in rows] == [Decimal(5)] * len(users)
    await assert_books_balance(pool, redis, keys)


async def test_the_pace_asks_each_call_to_wait_for_the_users_before_it() -> None:
    pace = renewal.Pace(100)
    await pace.take(50)  # the first: at once
    assert pace.started is not None
    waited = pace.started + pace.taken / pace.rate  # when the next may go: 0.5 s after the first
    assert 0.49 < waited - pace.started <= 0.5
    unpaced = renewal.Pace(0)
    await unpaced.take(10**6)
    assert unpaced.started is None
