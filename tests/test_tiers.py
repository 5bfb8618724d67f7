"""Tiers come from a TOML file: the original system's defaults; caps and default settable."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.base.settings import Settings
from gateway.credits.tiers import TierConfigError, load_tiers, parse_tiers
from tests.conftest import FakeClock, gateway


def test_defaults_are_the_original_systems() -> None:
    table = load_tiers(None)
    assert {t.name: t.allocation for t in table.tiers.values()} == {
        "free": 0,
        "trial": 5_000_000,
        "starter": 20_000_000,
        "professional": 60_000_000,
        "enterprise": 999_999_990_000,
    }
    assert table.default == "trial"
    assert all(t.monthly_cap is None for t in table.tiers.values())


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[tiers.a]\nallocation = 1.5\ndefault_tier = "a"', "float"),
        ('default_tier = "zzz"\n[tiers.a]\nallocation = "1"', "default_tier"),
        ('[tiers.a]\nallocation = "1.0000001"', "6 decimal places"),
        ('[tiers.a]\nallocation = "-1"', "greater than 0"),
        ('default_tier = "a"', "tiers"),
        ('[tiers."a\\u001fb"]\nallocation = "1"', "control characters"),
    ],
)
def test_bad_tier_files_are_refused_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(TierConfigError, match=says):
        parse_tiers(text)


async def test_configured_default_tier_and_cap(
    tmp_path: Path, settings: Settings, clock: FakeClock, pool: asyncpg.Pool, redis: Redis
) -> None:
    tiers = tmp_path / "tiers.toml"
    tiers.write_text(
        'default_tier = "basic"\n'
        '[tiers.basic]\nallocation = "12.5"\nmonthly_cap = "10"\n'
        '[tiers.pro]\nallocation = "100"\n'
    )
    async with gateway(settings, clock, tiers_file=str(tiers)) as c:
        bal = (await c.get("/api/v1/credits/balance", params={"user_id": "z"})).json()
        assert bal["tier"] == "basic" and bal["credits_remaining"] == "12.500000"
        assert bal["monthly_cap"] == "10.000000"
        row = await pool.fetchrow("SELECT * FROM user_credits WHERE user_id = 'z'")
        assert row["monthly_cap"] == 10 and row["credits_allocated"] == 12.5
        moved = (await c.put("/api/v1/credits/z/tier", json={"tier": "pro"})).json()
        assert moved["monthly_cap"] is None and moved["credits_remaining"] == "100.000000"
        await c.app.state.services.flusher.flush()
        row = await pool.fetchrow("SELECT * FROM user_credits WHERE user_id = 'z'")
        assert row["monthly_cap"] is None and row["tier"] == "pro"
