"""When Redis is unreachable, requests get a clear 503 (bounded by redis_timeout), never a 500."""

from __future__ import annotations

import asyncpg
import httpx

from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN_KEY, FakeClock, running
from tests.servers import free_port


async def test_redis_down_gives_503_fast(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool
) -> None:
    fields = {f: getattr(settings, f) for f in settings.__struct_fields__}
    dead = Settings(
        **{**fields, "redis_url": f"redis://127.0.0.1:{free_port()}/0", "redis_timeout": 0.5}
    )
    app = create_app(dead, clock=clock)
    async with (
        running(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gateway",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ) as c,
    ):
        r = await c.post(
            "/api/v1/credits/debit", json={"user_id": "u", "amount": "1", "request_id": "x"}
        )
        assert r.status_code == 503 and "Redis" in r.json()["detail"]
        ready = await c.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unreach")
        assert (await c.get("/health/live")).status_code == 200
