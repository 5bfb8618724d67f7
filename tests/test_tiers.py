"""Tiers come from a TOML file: the original system's defaults; caps and default settable."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.base.settings import Settings
from gateway.credits.keys import keys_of
from gateway.credits.tiers import TierConfigError, load_tiers, parse_tiers
from tests.books import assert_books_balance
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
        ('[tiers.a]\nallocation = "1"\nprice_multiplier = 1.5', "decimal string"),
        ('[tiers.a]\nallocation = "1"\nprice_multiplier = "0"', "> 0 and <= 1000"),
        ('[tiers.a]\nallocation = "1"\nprice_multiplier = "1.0000001"', "6 decimal places"),
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


async def test_a_tiers_price_multiplier_applies_to_priced_calls_only(
    tmp_path: Path, settings: Settings, clock: FakeClock, pool: asyncpg.Pool, redis: Redis
) -> None:
    """pro pays 1.25 x and cheap 0.5 x the model prices, basic the prices: debits, commits
    (and their replays) and batch items priced from tokens; an amount sent is charged as
    sent. The script picks the user's tier's amount, so a tier change counts at once."""
    tiers = tmp_path / "tiers.toml"
    tiers.write_text(
        'default_tier = "basic"\n[tiers.basic]\nallocation = "10"\n'
        '[tiers.pro]\nallocation = "10"\nprice_multiplier = "1.25"\n'
        '[tiers.cheap]\nallocation = "10"\nprice_multiplier = "0.5"\n'
    )
    million = {"model": "m", "input_tokens": 1_000_000}  # 1.000000 at the model price
    async with gateway(settings, clock, tiers_file=str(tiers)) as c:
        listed = (await c.get("/api/v1/tiers")).json()["tiers"]
        assert {t["name"]: t["price_multiplier"] for t in listed}["pro"] == "1.25"
        r = await c.put(
            "/api/v1/pricing/m", json={"input_per_million": "1", "output_per_million": "2"}
        )
        assert r.status_code == 200
        for user, tier in (("t-pro", "pro"), ("t-cheap", "cheap")):
            await c.get("/api/v1/credits/balance", params={"user_id": user})
            assert (
                await c.put(f"/api/v1/credits/{user}/tier", json={"tier": tier})
            ).status_code == 200

        async def debit(user: str, rid: str, **body: object) -> str:
            d = await c.post(
                "/api/v1/credits/debit", json={"user_id": user, "request_id": rid, **body}
            )
            assert d.status_code == 200, d.text
            return str(d.json()["charged"])

        assert await debit("t-basic", "a1", **million) == "1.000000"
        assert await debit("t-pro", "b1", **million) == "1.250000"
        assert await debit("t-pro", "b1", **million) == "1.250000"  # replay
        assert await debit("t-pro", "b2", amount="1") == "1.000000"  # as sent
        res = await c.post(
            "/api/v1/credits/reservations",
            json={"user_id": "t-pro", "amount": "2", "request_id": "b3"},
        )
        path = f"/api/v1/credits/reservations/{res.json()['reservation_id']}/commit"
        for _ in range(2):  # the second is the replay of the first
            done = await c.post(path, json=million)
            assert done.status_code == 200 and done.json()["charged"] == "1.250000", done.text
        batch = await c.post(
            "/api/v1/credits/debit/batch",
            json={"debits": [{"user_id": "t-cheap", "request_id": "c1", **million}]},
        )
        assert batch.json()["results"][0]["result"]["charged"] == "0.500000"
        await c.put("/api/v1/credits/t-pro/tier", json={"tier": "basic"})
        assert await debit("t-pro", "b4", **million) == "1.000000"  # the tier of the moment
        await c.app.state.services.flusher.flush()
        await assert_books_balance(pool, redis, keys_of(settings))
