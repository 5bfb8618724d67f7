"""Readiness: Redis and PostgreSQL reachable, migrations applied."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Response

from gateway.services import Services
from persistence import migrate, queries


async def readiness(state: Services) -> Response[dict[str, Any]]:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(state.redis.ping(), 2)
        checks["redis"] = "ok"
    except Exception as exc:  # any failure means not ready
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        async with asyncio.timeout(2):
            async with state.pool.acquire() as conn:
                await conn.fetchval(queries.PING)
                missing = await migrate.pending(conn)
        checks["postgres"] = "ok"
        checks["migrations"] = "ok" if not missing else f"pending: {', '.join(missing)}"
    except Exception as exc:
        checks["postgres"] = f"unreachable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values()) and len(checks) == 3
    return Response(
        {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
    )
