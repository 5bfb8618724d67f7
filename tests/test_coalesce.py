"""Coalescing: concurrent debits share pipelines, each gets its own answer, scripts reload."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg

from gateway.base.settings import Settings
from loadtests.servers import private_redis
from tests.conftest import Client, FakeClock, gateway


async def test_concurrent_calls_share_round_trips(client: Client) -> None:
    await client.get("/api/v1/credits/balance", params={"user_id": "c"})  # warm
    coalescer = client.app.state.services.credits.coalescer
    batches, calls = coalescer.batches, coalescer.calls
    results = await asyncio.gather(
        *(
            client.post(
                "/api/v1/credits/debit",
                json={"user_id": "c", "amount": "0.01", "request_id": f"r{i}"},
            )
            for i in range(200)
        )
    )
    assert Counter(r.status_code for r in results) == {200: 200}
    remaining = sorted(r.json()["credits_remaining"] for r in results)
    assert remaining[0] == "3.000000" and len(set(remaining)) == 200  # each its own answer
    assert coalescer.calls - calls == 200
    assert coalescer.batches - batches < 200  # fewer round trips than calls


async def test_scripts_are_reloaded_after_script_flush(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool
) -> None:
    with private_redis() as url:
        async with gateway(settings, clock, redis_url=url) as c:
            await c.get("/api/v1/credits/balance", params={"user_id": "s"})
            await c.app.state.services.redis.script_flush()
            r = await c.post(
                "/api/v1/credits/debit", json={"user_id": "s", "amount": "1", "request_id": "x"}
            )
            assert r.status_code == 200 and r.json()["credits_remaining"] == "4.000000"
            await c.app.state.services.flusher.flush()
