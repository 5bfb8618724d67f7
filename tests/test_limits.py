"""Bounded state: the unflushed backlog has a ceiling (503, nothing changed), health says when the
flusher is behind, and the gateway will not run on a Redis that could evict unflushed state."""

from __future__ import annotations

import logging

import asyncpg
import pytest

from gateway.api.health import UnsafeRedis
from gateway.base.settings import Settings
from gateway.flusher.flush import FlushLoop
from loadtests.servers import private_redis
from tests.conftest import Client, FakeClock, gateway


async def debit(c: Client, user: str, rid: str) -> int:
    r = await c.post(
        "/api/v1/credits/debit", json={"user_id": user, "amount": "0.01", "request_id": rid}
    )
    return r.status_code


async def test_backlog_ceiling_refuses_writes_until_flushed(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool
) -> None:
    async with gateway(settings, clock, shards=1, max_backlog=5) as c:
        assert [await debit(c, "u", f"r{i}") for i in range(5)] == [200] * 5
        full = await c.post(
            "/api/v1/credits/debit", json={"user_id": "u", "amount": "0.01", "request_id": "r5"}
        )
        assert full.status_code == 503 and "flusher is behind" in full.json()["detail"]
        assert await debit(c, "u", "r0") == 200  # a replay is still answered
        batch = await c.post(
            "/api/v1/credits/debit/batch",
            json={"debits": [{"user_id": "u", "amount": "1", "request_id": "b"}]},
        )
        assert batch.json()["results"][0]["status"] == 503
        ready = (await c.get("/health/ready")).json()
        assert ready["flusher"]["status"] == "down" and ready["flusher"]["running"] == 0
        await FlushLoop(c.app.state.services.flusher, 1).beat()  # a flusher comes up
        ready = (await c.get("/health/ready")).json()
        assert ready["flusher"]["status"] == "behind" and ready["flusher"]["backlog"] == 5
        await c.app.state.services.flusher.flush()
        assert await debit(c, "u", "r5") == 200
        bal = await c.get("/api/v1/credits/balance", params={"user_id": "u"})
        assert bal.json()["credits_remaining"] == "4.940000"  # 6 debits, none lost or doubled
        await c.app.state.services.flusher.flush()
        ready = (await c.get("/health/ready")).json()
        assert ready["flusher"] == {
            "status": "ok",
            "running": 1,
            "backlog": 0,
            "oldest_event_age_seconds": 0.0,
            "dead_letters": 0,
        }


async def test_redis_that_may_evict_is_refused_or_warned_about(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    with private_redis("--maxmemory-policy", "allkeys-lru") as url:
        with pytest.raises(UnsafeRedis, match="allkeys-lru"):
            async with gateway(settings, clock, redis_url=url):
                pass
        caplog.set_level(logging.ERROR)
        async with gateway(settings, clock, redis_url=url, eviction_check="warn") as c:
            assert (await c.get("/health/live")).status_code == 200
        assert "maxmemory-policy is 'allkeys-lru'" in caplog.text
