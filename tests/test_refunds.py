"""Refunds: all or part of a debit, never more than it charged across all its refunds."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.credits.keys import Keys
from tests.conftest import BACKENDS, Client, FakeClock

# on one Redis and on a Redis Cluster of 3 masters
pytestmark = pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)

REFUND = "/api/v1/credits/refund"


async def debit(c: Client, user: str, amount: str, rid: str) -> str:
    r = await c.post(
        "/api/v1/credits/debit", json={"user_id": user, "amount": amount, "request_id": rid}
    )
    assert r.status_code == 200, r.text
    return str(r.json()["transaction_id"])


async def refund(c: Client, user: str, txn: str, rid: str, amount: str | None = None) -> Any:
    body: dict[str, Any] = {"user_id": user, "transaction_id": txn, "request_id": rid}
    if amount is not None:
        body["amount"] = amount
    return await c.post(REFUND, json=body)


async def test_full_refund_of_an_unflushed_debit(client: Client, pool: asyncpg.Pool) -> None:
    txn = await debit(client, "a", "1.5", "d1")  # not flushed yet: the refund flushes it
    r = await refund(client, "a", txn, "rf1")
    assert r.status_code == 200, r.text
    assert r.json()["refunded"] == "1.500000" and r.json()["credits_remaining"] == "5.000000"
    assert r.json()["refund_of"] == txn
    await client.app.state.services.flusher.flush()
    row = await pool.fetchrow("SELECT * FROM credit_transactions WHERE request_id = 'rf1'")
    assert row["transaction_type"] == "refund" and row["amount"] == Decimal("1.5")
    assert str(row["refund_of"]) == txn
    again = await refund(client, "a", txn, "rf2")
    assert again.status_code == 409 and "in full" in again.json()["detail"]


async def test_partial_refunds_stop_at_the_charge(client: Client) -> None:
    txn = await debit(client, "b", "1", "d")
    assert (await refund(client, "b", txn, "r1", "0.4")).json()["refunded"] == "0.400000"
    over = await refund(client, "b", txn, "r2", "0.600001")
    assert over.status_code == 422 and "0.600000" in over.json()["detail"]
    rest = await refund(client, "b", txn, "r3")
    assert rest.json()["refunded"] == "0.600000" and rest.json()["credits_remaining"] == "5.000000"


async def test_concurrent_refunds_never_exceed_the_debit(client: Client) -> None:
    txn = await debit(client, "c", "1", "d")
    await client.app.state.services.flusher.flush()
    results = await asyncio.gather(*(refund(client, "c", txn, f"r{i}", "0.1") for i in range(20)))
    assert Counter(r.status_code for r in results) == {200: 10, 409: 10}
    bal = await client.get("/api/v1/credits/balance", params={"user_id": "c"})
    assert bal.json()["credits_remaining"] == "5.000000"


async def test_refund_limit_survives_the_tracker_expiring(
    client: Client, redis: Redis, keys: Keys
) -> None:
    txn = await debit(client, "d", "1", "d")
    await refund(client, "d", txn, "r1", "0.7")
    await client.app.state.services.flusher.flush()
    await redis.delete(keys.refunded("d", txn))  # expired: PostgreSQL still knows
    over = await refund(client, "d", txn, "r2", "0.5")
    assert over.status_code == 422 and "0.300000" in over.json()["detail"]


async def test_refund_is_idempotent(client: Client) -> None:
    txn = await debit(client, "e", "1", "d")
    first = (await refund(client, "e", txn, "r", "0.5")).json()
    again = await refund(client, "e", txn, "r", "0.5")
    assert again.json() == {**first, "replayed": True}
    other = await refund(client, "e", txn, "r", "0.25")
    assert other.status_code == 409


async def test_refund_lowers_the_periods_spending(client: Client, clock: FakeClock) -> None:
    txn = await debit(client, "f", "2", "d")
    await refund(client, "f", txn, "r", "0.5")
    bal = (await client.get("/api/v1/credits/balance", params={"user_id": "f"})).json()
    assert bal["period_spent"] == "1.500000"


async def test_only_the_users_own_debits_can_be_refunded(client: Client) -> None:
    txn = await debit(client, "g", "1", "d")
    other = await refund(client, "someone-else", txn, "r")
    assert other.status_code == 404
    assert (await refund(client, "g", str(uuid.uuid4()), "r")).status_code == 404
    grant = await client.post(
        "/api/v1/credits/grant", json={"user_id": "g", "amount": "1", "request_id": "gr"}
    )
    not_debit = await refund(client, "g", grant.json()["transaction_id"], "r")
    assert not_debit.status_code == 422 and "only debits" in not_debit.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "x", "transaction_id": "not-a-uuid", "request_id": "r"},
        {"user_id": "x", "transaction_id": str(uuid.UUID(int=1)), "request_id": "r", "amount": "0"},
        {"user_id": "x", "request_id": "r"},
        {"user_id": "x", "transaction_id": str(uuid.UUID(int=1))},
    ],
)
async def test_bad_refund_bodies_are_400(client: Client, body: dict[str, Any]) -> None:
    assert (await client.post(REFUND, json=body)).status_code == 400
