"""Per-model pricing: debits and commits without an amount are priced exactly, half-up."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from gateway.base.errors import Unprocessable
from gateway.credits.pricing import PriceBook, cost_micro
from persistence.pricing import Price
from tests.conftest import Client


async def set_price(c: Client, model: str, inp: Any, out: Any) -> Any:
    return await c.put(
        f"/api/v1/pricing/{model}", json={"input_per_million": inp, "output_per_million": out}
    )


def test_cost_is_exact_and_rounds_half_up() -> None:
    p = Price("m", Decimal("2.5"), Decimal("10"))
    assert cost_micro(p, 1234, 567) == 8755  # 0.008755 exactly
    assert cost_micro(p, 1, 0) == 3  # 0.0000025 -> 0.000003 (half-up, not half-even)
    assert cost_micro(Price("m", Decimal("1.4"), Decimal(0)), 1, 0) == 1  # 0.0000014 -> 0.000001
    assert cost_micro(p, 0, 0) == 0


async def test_set_list_and_debit_by_tokens(client: Client, pool: asyncpg.Pool) -> None:
    r = await set_price(client, "gpt-4o", "2.5", 10)
    assert r.status_code == 200, r.text
    assert r.json()["input_per_million"] == "2.500000"
    listed = (await client.get("/api/v1/pricing")).json()["prices"]
    assert [(p["model"], p["output_per_million"]) for p in listed] == [("gpt-4o", "10.000000")]
    d = await client.post(
        "/api/v1/credits/debit",
        json={
            "user_id": "u",
            "request_id": "r",
            "model": "gpt-4o",
            "input_tokens": 1234,
            "output_tokens": 567,
        },
    )
    assert d.status_code == 200, d.text
    assert d.json()["charged"] == "0.008755" and d.json()["credits_remaining"] == "4.991245"
    await client.app.state.services.flusher.flush()
    row = await pool.fetchrow("SELECT * FROM credit_transactions WHERE request_id = 'r'")
    assert row["amount"] == Decimal("-0.008755") and row["input_tokens"] == 1234


async def test_unknown_model_is_422_and_charges_nothing(client: Client) -> None:
    d = await client.post(
        "/api/v1/credits/debit",
        json={"user_id": "u", "request_id": "r", "model": "nope", "output_tokens": 5},
    )
    assert d.status_code == 422 and "no price for model 'nope'" in d.json()["detail"]
    bal = await client.get("/api/v1/credits/balance", params={"user_id": "u"})
    assert bal.json()["credits_remaining"] == "5.000000"


async def test_commit_and_batch_are_priced_too(client: Client) -> None:
    await set_price(client, "small", "1", "2")
    res = await client.post(
        "/api/v1/credits/reservations", json={"user_id": "c", "amount": "1", "request_id": "h"}
    )
    done = await client.post(
        f"/api/v1/credits/reservations/{res.json()['reservation_id']}/commit",
        json={"model": "small", "input_tokens": 100_000, "output_tokens": 50_000},
    )
    assert done.json()["charged"] == "0.200000" and done.json()["released"] == "0.800000"
    batch = await client.post(
        "/api/v1/credits/debit/batch",
        json={
            "debits": [
                {"user_id": "c", "request_id": "b1", "model": "small", "output_tokens": 500_000},
                {"user_id": "c", "request_id": "b2", "model": "big", "output_tokens": 1},
            ]
        },
    )
    results = batch.json()["results"]
    assert results[0]["result"]["charged"] == "1.000000"
    assert results[1]["status"] == 422


@pytest.mark.parametrize(
    ("inp", "out"),
    [("-1", "1"), ("1.0000001", "1"), ("NaN", "1"), ("x", "1"), (None, "1"), ("1e13", "1")],
)
async def test_bad_prices_are_400(client: Client, inp: Any, out: Any) -> None:
    assert (await set_price(client, "m", inp, out)).status_code == 400


async def test_debit_without_amount_or_tokens_is_400(client: Client) -> None:
    r = await client.post(
        "/api/v1/credits/debit", json={"user_id": "u", "request_id": "r", "model": "gpt-4o"}
    )
    assert r.status_code == 400 and "amount is required" in r.text


async def test_a_price_change_reaches_other_processes_within_the_ttl(pool: asyncpg.Pool) -> None:
    here, there = PriceBook(pool, ttl=60), PriceBook(pool, ttl=0.2)
    await here.set("m", Decimal(1), Decimal(1), "test")
    assert await there.price("m", 1_000_000, 0) == 1_000_000
    await here.set("m", Decimal(2), Decimal(1), "test")
    assert await here.price("m", 1_000_000, 0) == 2_000_000  # at once where it was set
    await asyncio.sleep(0.25)
    assert await there.price("m", 1_000_000, 0) == 2_000_000
    with pytest.raises(Unprocessable):
        await there.price("other", 1, 1)
