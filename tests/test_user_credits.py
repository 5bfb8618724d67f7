"""The seed's required tests for create_user_credits(), against real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from persistence.users import UserCreditsError, create_user_credits, get_user

PERIOD = datetime(2026, 11, 1, tzinfo=UTC)


async def create(pool: asyncpg.Pool, user_id: str, **kw: object) -> tuple[object, bool]:
    args: dict[str, object] = dict(
        tier="trial", allocation=Decimal("5.00"), monthly_cap=None, last_reset=PERIOD
    )
    args.update(kw)
    return await create_user_credits(pool, user_id, **args)  # type: ignore[arg-type]


async def test_insert_executes_and_fills_every_column(pool: asyncpg.Pool) -> None:
    _row, created = await create(
        pool, "fresh", tier="starter", allocation=Decimal("20.00"), monthly_cap=Decimal("15.5")
    )
    assert created
    rec = await pool.fetchrow("SELECT * FROM user_credits WHERE user_id = 'fresh'")
    assert rec is not None
    assert rec["id"] is not None
    assert rec["credits_remaining"] == Decimal("20.000000")
    assert rec["credits_allocated"] == Decimal("20.000000")
    assert rec["tier"] == "starter"
    assert rec["monthly_cap"] == Decimal("15.500000")
    assert rec["last_reset"] == PERIOD  # start of the current period, not the next reset
    assert rec["created_at"] is not None and rec["updated_at"] is not None
    assert rec["redis_version"] == 0
    # the allocation is the user's first ledger entry, so the ledger explains the balance
    led = await pool.fetch("SELECT * FROM credit_transactions WHERE user_id = 'fresh'")
    assert [(r["transaction_type"], r["amount"]) for r in led] == [("allocation", Decimal("20"))]


async def test_existing_user_is_left_as_it_was(pool: asyncpg.Pool) -> None:
    _first, _ = await create(pool, "old")
    await pool.execute("UPDATE user_credits SET credits_remaining = 1.25 WHERE user_id = 'old'")
    row, created = await create(pool, "old", tier="enterprise", allocation=Decimal("999999.99"))
    assert not created
    assert row.tier == "trial" and row.credits_remaining == Decimal("1.25")  # type: ignore[attr-defined]
    assert await pool.fetchval("SELECT count(*) FROM credit_transactions WHERE user_id='old'") == 1


async def test_defaults_are_set_by_the_schema(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO user_credits (user_id) VALUES ('bare')")
    rec = await pool.fetchrow("SELECT * FROM user_credits WHERE user_id = 'bare'")
    assert rec is not None
    assert rec["tier"] == "free" and rec["credits_remaining"] == 0
    now = await pool.fetchval("SELECT now()")
    for col in ("created_at", "updated_at", "last_reset"):
        assert rec[col] is not None and abs((now - rec[col]).total_seconds()) < 60


async def test_concurrent_creation_creates_once(pool: asyncpg.Pool) -> None:
    results = await asyncio.gather(*(create(pool, "racer") for _ in range(20)))
    assert sum(created for _, created in results) == 1
    assert await pool.fetchval("SELECT count(*) FROM user_credits WHERE user_id='racer'") == 1
    assert (
        await pool.fetchval("SELECT count(*) FROM credit_transactions WHERE user_id='racer'") == 1
    )


async def test_duplicate_user_is_refused_by_the_unique_constraint(pool: asyncpg.Pool) -> None:
    await create(pool, "dup")
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute("INSERT INTO user_credits (user_id) VALUES ('dup')")


async def test_overlong_user_id_is_a_clear_error(pool: asyncpg.Pool) -> None:
    with pytest.raises(UserCreditsError, match="at most 255"):
        await create(pool, "x" * 256)
    _row, created = await create(pool, "é" * 255)  # 255 characters, more bytes: fits
    assert created


async def test_value_beyond_numeric_12_6_is_a_clear_error(pool: asyncpg.Pool) -> None:
    with pytest.raises(UserCreditsError, match=r"numeric\(12,6\)"):
        await create(pool, "rich", allocation=Decimal("1000000"))
    assert await get_user(pool, "rich") is None
