"""Per-model pricing: debits and commits without an amount are priced exactly, half-up."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from gateway.base.errors import Unprocessable
from gateway.credits.pricing import PriceBook, cost_micro
from gateway.credits.schemas import CommitRequest
from persistence.pricing import Price
from tests.conftest import Client


async def set_price(c: Client, model: str, inp: Any, out: Any) -> Any:
    return await c.put(
        f"/api/v1/pricing/{model}", json={"input_per_million": inp, "output_per_million": out}
    )


def used(tin: int = 0, tout: int = 0, **kinds: int) -> CommitRequest:
    return CommitRequest(model="m", input_tokens=tin, output_tokens=tout, **kinds)


def test_cost_is_exact_and_rounds_half_up() -> None:
    p = Price("m", Decimal("2.5"), Decimal("10"))
    assert cost_micro(p, used(1234, 567)) == 8755  # 0.008755 exactly
    assert cost_micro(p, used(1, 0)) == 3  # 0.0000025 -> 0.000003 (half-up, not half-even)
    assert cost_micro(Price("m", Decimal("1.4"), Decimal(0)), used(1, 0)) == 1  # 0.0000014
    assert cost_micro(p, used(0, 0)) == 0


def test_each_token_kind_has_its_rate_and_unset_rates_fall_back() -> None:
    """(input x 2.5 + cached x 1.25 + cache write x 3.125 + (output - reasoning) x 10 +
    reasoning x 12) / 1e6, rounded once: 1000 input, 600 cached, 400 written, 300 output of
    which 100 reasoning = 2500 + 750 + 1250 + 2000 + 1200 = 7700 / 1e6."""
    rates = Price("m", Decimal("2.5"), Decimal(10), Decimal("1.25"), Decimal("3.125"), Decimal(12))
    call = used(1000, 300, cached_input_tokens=600, cache_write_tokens=400, reasoning_tokens=100)
    assert cost_micro(rates, call) == 7700
    plain = Price("m", Decimal("2.5"), Decimal(10))  # cached/written at 2.5, reasoning at 10
    assert cost_micro(plain, call) == 2500 + 1500 + 1000 + 3000
    # rounded once, not per kind: 1 input at 0.4 + 1 cached at 0.4 = 0.0000008 -> 0.000001
    halves = Price("m", Decimal("0.4"), Decimal(0), Decimal("0.4"))
    assert cost_micro(halves, used(1, 0, cached_input_tokens=1)) == 1


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
    await here.set(Price("m", Decimal(1), Decimal(1)), "test")
    assert await there.price(used(1_000_000)) == 1_000_000
    await here.set(Price("m", Decimal(2), Decimal(1)), "test")
    assert await here.price(used(1_000_000)) == 2_000_000  # at once where it was set
    await asyncio.sleep(0.25)
    assert await there.price(used(1_000_000)) == 2_000_000
    with pytest.raises(Unprocessable):
        await there.price(CommitRequest(model="other", input_tokens=1))


async def test_provider_token_kinds_priced_recorded_and_checked(
    client: Client, pool: asyncpg.Pool
) -> None:
    """PUT with the three optional rates; a debit and a commit with cached, cache-write and
    reasoning tokens are charged by them and the ledger records each count; reasoning above
    output is a 400 naming the rule, and nothing is charged."""
    r = await client.put(
        "/api/v1/pricing/cachey",
        json={
            "input_per_million": "2.5",
            "output_per_million": "10",
            "cached_input_per_million": "1.25",
            "cache_write_per_million": "3.125",
            "reasoning_per_million": "12",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["cached_input_per_million"] == "1.250000"
    listed = (await client.get("/api/v1/pricing")).json()["prices"]
    assert listed[0]["reasoning_per_million"] == "12.000000"
    kinds = {"cached_input_tokens": 600, "cache_write_tokens": 400, "reasoning_tokens": 100}
    call = {"model": "cachey", "input_tokens": 1000, "output_tokens": 300, **kinds}
    d = await client.post(
        "/api/v1/credits/debit", json={"user_id": "k", "request_id": "k1", **call}
    )
    assert d.status_code == 200, d.text
    assert d.json()["charged"] == "0.007700"
    res = await client.post(
        "/api/v1/credits/reservations", json={"user_id": "k", "amount": "1", "request_id": "k2"}
    )
    done = await client.post(
        f"/api/v1/credits/reservations/{res.json()['reservation_id']}/commit", json=call
    )
    assert done.json()["charged"] == "0.007700", done.text
    bad = await client.post(
        "/api/v1/credits/debit",
        json={"user_id": "k", "request_id": "k3", **call, "reasoning_tokens": 301},
    )
    assert bad.status_code == 400 and "reasoning_tokens must be at most output_tokens" in bad.text
    plain = await client.put(
        "/api/v1/pricing/cachey", json={"input_per_million": "2.5", "output_per_million": "10"}
    )
    assert plain.json()["cached_input_per_million"] is None  # unset again: the input rate
    await client.app.state.services.flusher.flush()
    rows = await pool.fetch(
        "SELECT cached_input_tokens, cache_write_tokens, reasoning_tokens FROM "
        "credit_transactions WHERE user_id = 'k' AND transaction_type = 'usage'"
    )
    assert [tuple(r) for r in rows] == [(600, 400, 100)] * 2
    page = (await client.get("/api/v1/credits/k/transactions")).json()["transactions"]
    assert {t["reasoning_tokens"] for t in page if t["type"] == "usage"} == {100}
    bal = await client.get("/api/v1/credits/balance", params={"user_id": "k"})
    assert bal.json()["credits_remaining"] == "4.984600"
