"""Health: readiness (can this gateway serve debits: Redis, a live flusher, no pending
migration; PostgreSQL's state and the flusher's lag reported as degraded fields), how far behind
the flusher is, and the start-up checks that Redis will never evict unflushed state and of its
replication."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from litestar import Response
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from gateway.api.services import Services
from gateway.base.durable import Durability, primaries_info
from gateway.flusher.flush import ALIVE_SECONDS
from persistence import migrate, queries

log = logging.getLogger("metering.health")


class UnsafeRedis(RuntimeError):
    """Redis is configured so that it could drop credit state that is not flushed yet."""


async def check_eviction(redis: Redis, mode: Literal["refuse", "warn"]) -> str:
    """Every key the gateway writes is state that may not be in PostgreSQL yet, so Redis must
    never evict: maxmemory-policy noeviction (writes fail instead, and clients get 503)."""
    try:
        policy = str((await redis.config_get("maxmemory-policy")).get("maxmemory-policy"))
    except ResponseError:
        log.warning(
            "cannot read Redis maxmemory-policy (CONFIG GET refused); make sure it is "
            "noeviction, or unflushed credit state may be evicted"
        )
        return "unknown"
    except (RedisError, OSError):
        log.warning("Redis unreachable at start-up; maxmemory-policy not checked")
        return "unknown"
    if policy != "noeviction":
        message = (
            f"Redis maxmemory-policy is {policy!r}: under memory pressure Redis would "
            "evict balances, idempotency records and unflushed ledger events. Set "
            "'maxmemory-policy noeviction' (or METERING_EVICTION_CHECK=warn to start anyway)"
        )
        if mode == "refuse":
            raise UnsafeRedis(message)
        log.error(message)
    return policy


async def _config_per_primary(redis: Redis, name: str) -> list[str]:
    if isinstance(redis, RedisCluster):
        answers = await redis.config_get(name, target_nodes=RedisCluster.PRIMARIES)
        values = answers.values() if isinstance(answers, dict) else []
        return [str(v.get(name)) if isinstance(v, dict) else str(v) for v in values]
    return [str((await redis.config_get(name)).get(name))]


async def check_replication(redis: Redis, mode: Durability, replicas: int) -> dict[str, Any]:
    """What start-up finds of Redis's replication, logged where it puts money at risk:
    - replica mode, a primary with fewer replicas than changes wait for: they answer 503
      until it has them;
    - primary mode, a primary with replicas: a failover can take back acknowledged changes;
    - a primary with replicas and min-replicas-to-write 0: cut off from its replicas, or
      restarted from its AOF before Sentinel or the cluster demotes it, it goes on taking
      writes that the failover then discards (docs/reliability.md)."""
    try:
        infos = await primaries_info(redis, "replication")
        guards = await _config_per_primary(redis, "min-replicas-to-write")
    except ResponseError:
        log.warning("cannot read Redis's replication settings (INFO or CONFIG GET refused)")
        return {"checked": False}
    except (RedisError, OSError):
        log.warning("Redis unreachable at start-up; replication not checked")
        return {"checked": False}
    counts = [int(i.get("connected_slaves", 0)) for i in infos]
    short = sum(1 for n in counts if n < replicas)
    if mode == "replica" and short:
        log.error(
            "METERING_REDIS_DURABILITY=replica: %d of %d Redis primaries have fewer than %d "
            "replica(s) connected; their changes answer 503 until they do (a Redis without "
            "replicas: set METERING_REDIS_DURABILITY=primary)",
            short,
            len(counts),
            replicas,
        )
    if mode == "primary" and any(counts):
        log.warning(
            "Redis has replicas but METERING_REDIS_DURABILITY=primary: a failover can lose "
            "changes already acknowledged; set it to replica (docs/reliability.md)"
        )
    unguarded = sum(1 for n, g in zip(counts, guards, strict=False) if n and g in ("0", "None"))
    if unguarded:
        log.warning(
            "%d Redis primaries have replicas and min-replicas-to-write 0: an isolated or "
            "restarted old primary would accept writes a failover then discards; set "
            "min-replicas-to-write 1 and min-replicas-max-lag 10 (docs/reliability.md)",
            unguarded,
        )
    return {"checked": True, "replicas": counts, "short": short, "unguarded": unguarded}


async def flusher_status(s: Services) -> dict[str, Any]:
    """Unflushed events over all shards and the age of the oldest one."""
    return (await flusher_state(s))[0]


async def flusher_state(s: Services) -> tuple[dict[str, Any], list[int]]:
    """The flusher status, and the unflushed events of each shard. Ages are on Redis's clock
    (the stream ids and the flushers' beats are), so every gateway reports the same.
    status: 'down' when no flusher has beaten in ALIVE_SECONDS (none is running anywhere on
    this key prefix: nothing reaches PostgreSQL), else 'behind' past the lag or backlog bounds,
    else 'ok'."""
    keys = s.credits.keys
    seconds, micros = await s.redis.time()
    now = int(seconds) + int(micros) / 1e6
    async with s.redis.pipeline(transaction=False) as pipe:
        for stream in keys.all_streams():
            pipe.xlen(stream)
            pipe.xrange(stream, count=1)
        for shard in range(keys.shards):
            pipe.xlen(keys.dead(shard))
        pipe.zcount(keys.flushers(), now - ALIVE_SECONDS, "+inf")
        answers = await pipe.execute()
    streams, dead = answers[: 2 * keys.shards], answers[2 * keys.shards : -1]
    running = int(answers[-1])
    per_shard = [int(n) for n in streams[0::2]]
    backlog = sum(per_shard)
    oldest = [int(str(first[0][0]).split("-")[0]) for first in streams[1::2] if first]
    age = max(0.0, now - min(oldest) / 1000) if oldest else 0.0
    behind = age > s.settings.flush_behind_seconds or backlog > s.settings.max_backlog // 2
    status = {
        "status": "down" if running == 0 else "behind" if behind else "ok",
        "running": running,
        "backlog": backlog,
        "oldest_event_age_seconds": round(age, 3),
        # events PostgreSQL refused, set aside for an operator (docs/operations.md)
        "dead_letters": sum(int(n) for n in dead),
    }
    return status, per_shard


async def readiness(state: Services) -> Response[dict[str, Any]]:
    """Ready (200) means this gateway can serve debits: Redis answers, a flusher is alive on
    its key prefix (what Redis acknowledges reaches PostgreSQL) and no migration is known to be
    pending. What it can serve around is reported, still 200, as "degraded" with the reasons:
    PostgreSQL unreachable (users Redis holds are served; new users and the PostgreSQL-backed
    reads answer 503), the flusher behind, dead letters waiting. 503 with the reasons otherwise:
    a load balancer wired to this probe drops a gateway only when it cannot charge."""
    checks: dict[str, str] = {}
    flusher: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(2):
            await state.redis.ping()
            flusher = await flusher_status(state)
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
        checks["migrations"] = "unknown (PostgreSQL unreachable)"
    failing = [f"redis {checks['redis']}"] if checks["redis"] != "ok" else []
    if checks["migrations"].startswith("pending"):
        failing.append(f"migrations {checks['migrations']}")
    if flusher is not None and flusher["status"] == "down":
        failing.append("no flusher is running: nothing reaches PostgreSQL")
    degraded = [f"postgres {checks['postgres']}"] if checks["postgres"] != "ok" else []
    if flusher is not None and flusher["status"] == "behind":
        degraded.append(f"flusher behind: oldest event {flusher['oldest_event_age_seconds']} s")
    if flusher is not None and flusher["dead_letters"]:
        degraded.append(f"{flusher['dead_letters']} dead letters wait for an operator")
    status = "not ready" if failing else "degraded" if degraded else "ready"
    body = {
        "status": status,
        "checks": checks,
        "flusher": flusher,
        **({"not_ready": failing} if failing else {}),
        **({"degraded": degraded} if degraded else {}),
    }
    return Response(body, status_code=503 if failing else 200)
