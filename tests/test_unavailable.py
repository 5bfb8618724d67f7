"""When Redis is unreachable, requests get a clear 503 (bounded by redis_timeout), never a 500."""

from __future__ import annotations

import asyncpg

from gateway.base.settings import Settings
from loadtests.servers import free_port
from tests.conftest import FakeClock, gateway


async def test_redis_down_gives_503_fast(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with gateway(settings, clock, redis_url=dead, redis_timeout=0.5) as c:
        r = await c.post(
            "/api/v1/credits/debit", json={"user_id": "u", "amount": "1", "request_id": "x"}
        )
        assert r.status_code == 503 and "Redis" in r.json()["detail"]
        ready = await c.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unreach")
        assert (await c.get("/health/live")).status_code == 200
