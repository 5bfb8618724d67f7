"""When Redis is unreachable, requests get a clear 503 (bounded by redis_timeout), never a 500."""

from __future__ import annotations

import asyncpg

from gateway.base.settings import Settings
from loadtests.servers import free_port, private_redis
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


async def test_a_read_only_redis_gives_503_not_500(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool
) -> None:
    """A replica, or a primary Sentinel demoted, refuses writes (READONLY): every write is a 503
    with retry advice, on the fast path and the Litestar routes alike. Only the cold path's
    PostgreSQL row (and its allocation entry) exists; no charge or grant was made."""
    with private_redis("--replicaof", "127.0.0.1", str(free_port())) as url:
        async with gateway(settings, clock, redis_url=url, redis_timeout=1) as c:
            body = {"user_id": "u", "amount": "1", "request_id": "x"}
            for path in ("/api/v1/credits/debit", "/api/v1/credits/reservations"):
                r = await c.post(path, json=body)
                assert r.status_code == 503, (path, r.text)
                assert "read-only" in r.json()["detail"] and r.headers["retry-after"] == "1"
            batch = await c.post("/api/v1/credits/debit/batch", json={"debits": [body]})
            assert batch.status_code == 503, batch.text
            grant = await c.post("/api/v1/credits/grant", json={**body, "request_id": "g"})
            assert grant.status_code == 503, grant.text
    types = await pool.fetch("SELECT DISTINCT transaction_type FROM credit_transactions")
    assert {r["transaction_type"] for r in types} <= {"allocation"}
