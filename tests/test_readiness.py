"""/health/ready means "this gateway can serve debits" (what a load balancer needs): PostgreSQL
down is "degraded" (200: users Redis holds are still charged), no flusher or Redis down is
"not ready" (503); each answer says why."""

from __future__ import annotations

import asyncpg
import httpx

from gateway.base.settings import Settings
from gateway.flusher.flush import FlushLoop
from loadtests.servers import free_port
from tests.conftest import Client, FakeClock, gateway


async def debit(c: httpx.AsyncClient, user: str, request_id: str) -> int:
    r = await c.post(
        "/api/v1/credits/debit", json={"user_id": user, "amount": "0.5", "request_id": request_id}
    )
    return r.status_code


async def test_postgresql_down_is_degraded_not_unready(
    client: Client, settings: Settings, clock: FakeClock, pool: asyncpg.Pool
) -> None:
    assert await debit(client, "known", "k1") == 200  # Redis holds this user now
    await client.app.state.services.flusher.flush()
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/metering"
    async with gateway(settings, clock, database_url=dead) as c:
        await FlushLoop(c.app.state.services.flusher, 1).beat()
        ready = await c.get("/health/ready")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "degraded" and body["checks"]["postgres"].startswith("unreach")
        assert body["degraded"][0].startswith("postgres unreachable")
        assert await debit(c, "known", "k2") == 200  # served: what ready promises
        assert await debit(c, "stranger", "s1") == 503  # a new user needs PostgreSQL


async def test_no_flusher_is_not_ready(client: Client) -> None:
    """Nothing beats on this key prefix (no flusher anywhere): acknowledged debits would stay
    in Redis alone, so the gateway is taken out of rotation until one runs again."""
    ready = await client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    assert ready.json()["not_ready"] == ["no flusher is running: nothing reaches PostgreSQL"]
    await FlushLoop(client.app.state.services.flusher, 1).beat()
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
    assert "degraded" not in ready.json() and "not_ready" not in ready.json()


async def test_a_pending_migration_is_not_ready(client: Client, pool: asyncpg.Pool) -> None:
    await FlushLoop(client.app.state.services.flusher, 1).beat()
    newest = await pool.fetchval("SELECT max(version) FROM schema_migrations")
    row = await pool.fetchrow("SELECT * FROM schema_migrations WHERE version = $1", newest)
    await pool.execute("DELETE FROM schema_migrations WHERE version = $1", newest)
    try:
        ready = await client.get("/health/ready")
        assert ready.status_code == 503, ready.text
        assert ready.json()["not_ready"] == [f"migrations pending: {newest}"]
    finally:
        columns = ", ".join(row.keys())
        values = ", ".join(f"${i + 1}" for i in range(len(row)))
        await pool.execute(
            f"INSERT INTO schema_migrations ({columns}) VALUES ({values})",
            *row.values(),
        )
