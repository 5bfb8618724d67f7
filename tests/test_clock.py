"""One clock for money: the scripts read Redis's TIME (plus the test clock's offset), so what a
caller's clock says cannot settle a hold twice, move a period back, or reorder the ledger.
Each case here failed when the callers' time travelled in the scripts' arguments."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.base.settings import Settings
from gateway.credits.clock import system_clock
from gateway.credits.coalesce import Call, Coalescer
from gateway.credits.keys import Keys
from persistence.events import fields, line_of
from tests.books import assert_books_balance
from tests.conftest import Client, FakeClock, gateway

RES = "/api/v1/credits/reservations"


async def balance(c: Client, user: str) -> dict[str, str]:
    r = await c.get("/api/v1/credits/balance", params={"user_id": user})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def reserve(c: Client, user: str, amount: str, rid: str, ttl: int = 1) -> str:
    r = await c.post(
        RES, json={"user_id": user, "amount": amount, "request_id": rid, "ttl_seconds": ttl}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["reservation_id"])


@pytest.mark.parametrize("settle", ["commit", "release"])
async def test_a_hold_returned_at_expiry_is_never_settled_again(
    client: Client, clock: FakeClock, pool: asyncpg.Pool, redis: Redis, keys: Keys, settle: str
) -> None:
    """A caller ahead of the hold's expiry returns it; one behind it then commits or releases.
    Before: the commit subtracted the returned hold again (held -1.00, 5.50 remaining, and an
    overspend); now the hold's absence from the holds set says it is gone."""
    res_id = await reserve(client, "h", "1", "r")
    clock.advance(seconds=2)  # a caller whose time is past the expiry touches the user
    assert (await balance(client, "h"))["credits_held"] == "0.000000"
    clock.advance(seconds=-2)  # one whose time is before it settles
    if settle == "commit":
        r = await client.post(f"{RES}/{res_id}/commit", json={"amount": "0.5"})
        assert r.status_code == 409 and "expired" in r.json()["detail"]
    else:
        r = await client.delete(f"{RES}/{res_id}")
        assert r.status_code == 200 and r.json()["status"] == "expired"
    bal = await balance(client, "h")
    assert bal["credits_held"] == "0.000000" and bal["credits_remaining"] == "5.000000"
    over = await client.post(
        "/api/v1/credits/debit", json={"user_id": "h", "amount": "5.01", "request_id": "big"}
    )
    assert over.status_code == 402
    await client.app.state.services.flusher.flush()
    await assert_books_balance(pool, redis, keys)


async def test_a_reset_from_a_clock_behind_never_moves_the_period_back(
    client: Client, clock: FakeClock, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    """Just after a month boundary an admin reset comes from a caller 2 s behind. Before: the
    period went back to the old month, the next call renewed the new month a second time and
    wiped the spending between; its monthly_reset was booked as sys:reused."""
    await balance(client, "p")  # in the month before
    nxt = clock.next_period(seconds=1) - timedelta(seconds=1)
    debit = {"user_id": "p", "amount": "1", "request_id": "before"}
    assert (await client.post("/api/v1/credits/debit", json=debit)).status_code == 200
    clock.now = nxt - timedelta(seconds=2)
    r = await client.post("/api/v1/credits/p/reset", json={"request_id": "admin-1"})
    assert r.status_code == 200, r.text
    clock.now = nxt + timedelta(seconds=3)
    debit = {"user_id": "p", "amount": "0.5", "request_id": "after"}
    assert (await client.post("/api/v1/credits/debit", json=debit)).json()[
        "credits_remaining"
    ] == "4.500000"
    bal = await balance(client, "p")
    assert bal["period_spent"] == "0.500000"  # the spending after the reset is kept
    assert await redis.hget(keys.user("p"), "pstart") == str(int(nxt.timestamp()))
    await client.app.state.services.flusher.flush()
    rows = await pool.fetch(
        "SELECT request_id FROM credit_transactions WHERE user_id = 'p' "
        "AND transaction_type = 'monthly_reset' ORDER BY redis_version"
    )
    assert [r["request_id"] for r in rows] == [f"sys:reset:{int(nxt.timestamp())}", "admin-1"]
    await assert_books_balance(pool, redis, keys)


async def test_ledger_times_follow_the_order_calls_reach_redis(
    settings: Settings,
    pool: asyncpg.Pool,
    redis: Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The coalescer sends each tick's pipeline as a task of its own, so a later tick's pipeline
    can reach Redis first. Times are read in Redis, so the ledger's order is Redis's order:
    here every other pipeline is held back, and the event times still never go backwards.
    (On the production clock: a frozen test clock, turned into an offset per call, would not
    flow.)"""
    async with gateway(settings, system_clock) as client:
        await _out_of_order_debits(client, redis, keys, monkeypatch)
        await client.app.state.services.flusher.flush()
    await assert_books_balance(pool, redis, keys)


async def _out_of_order_debits(
    client: Client, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    await balance(client, "o")
    real = Coalescer._pipeline
    sent = 0

    async def out_of_order(self: Coalescer, batch: list[Call]) -> list[Any]:
        nonlocal sent
        sent += 1
        if sent % 2:
            await asyncio.sleep(0.02)  # overtaken by the next tick's pipeline
        return await real(self, batch)

    monkeypatch.setattr(Coalescer, "_pipeline", out_of_order)

    async def one(i: int) -> int:
        r = await client.post(
            "/api/v1/credits/debit", json={"user_id": "o", "amount": "0.01", "request_id": f"{i}"}
        )
        return r.status_code

    tasks: list[asyncio.Task[int]] = []
    for wave in range(6):  # a pipeline each, however slow the machine: wait for it to leave
        before = sent
        tasks += [asyncio.create_task(one(wave * 10 + j)) for j in range(10)]
        for _ in range(2000):
            if sent > before:
                break
            await asyncio.sleep(0.001)
    assert Counter(await asyncio.gather(*tasks)) == {200: 60}
    assert sent >= 6
    events = [fields(line_of(f)) for _, f in await redis.xrange(keys.user_stream("o"))]
    times = [int(e["ts"]) for e in events if e["u"] == "o"]
    versions = [int(e["ver"]) for e in events if e["u"] == "o"]
    assert times == sorted(times) and versions == sorted(versions)
