"""Batch debits: per-item answers in order, one Redis round trip for a warm batch of 1000,
one command per shard."""

from __future__ import annotations

from collections import Counter
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster

from gateway.base.settings import Settings
from gateway.credits.keys import Keys
from loadtests.servers import private_redis
from tests.conftest import BACKENDS, Client, FakeClock, gateway

# on one Redis and on a Redis Cluster of 3 masters
pytestmark = pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)

BATCH = "/api/v1/credits/debit/batch"


def item(user: str, amount: str, rid: str, **kw: Any) -> dict[str, Any]:
    return {"user_id": user, "amount": amount, "request_id": rid, **kw}


async def test_items_are_answered_in_order_with_their_own_status(
    client: Client, pool: asyncpg.Pool
) -> None:
    await client.post("/api/v1/credits/debit", json=item("b", "1", "seen"))
    items = [
        item("a", "1", "r1", model="m"),
        item("a", "4.5", "r2"),  # 402: only 4 left
        {"user_id": "a", "amount": "-1", "request_id": "r3"},  # 400
        item("b", "1", "seen"),  # replay of an earlier debit
        item("b", "2", "seen"),  # 409: same id, other body
        item("a", "1", "r1", model="m"),  # a replay inside the same batch
        {"nonsense": True},  # 400
    ]
    r = await client.post(BATCH, json={"debits": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == list(range(7))
    assert [x["status"] for x in body["results"]] == [200, 402, 400, 200, 409, 200, 400]
    assert body["succeeded"] == 3 and body["failed"] == 4
    res = body["results"]
    assert res[0]["result"]["credits_remaining"] == "4.000000"
    assert res[1]["error"]["reason"] == "insufficient_credits"
    assert res[1]["error"]["credits_remaining"] == "4.000000"
    assert "greater than 0" in res[2]["error"]["detail"]
    assert res[3]["result"]["replayed"] is True
    assert res[5]["result"] == {**res[0]["result"], "replayed": True}
    await client.app.state.services.flusher.flush()
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM credit_transactions WHERE user_id='a' "
            "AND transaction_type='usage'"
        )
        == 1
    )


async def test_a_warm_batch_of_1000_is_one_round_trip(
    client: Client, monkeypatch: pytest.MonkeyPatch, redis: Redis, keys: Keys
) -> None:
    """One pipeline, nothing else, carrying one apply_many command per shard that has users (on
    a cluster, the pipeline goes to each node holding such shards, in parallel)."""
    users = [f"w{i}" for i in range(50)]
    for u in users:  # warm: every user already in Redis
        await client.get("/api/v1/credits/balance", params={"user_id": u})
    service_redis = client.app.state.services.redis
    trips: Counter[str] = Counter()
    pipeline = ClusterPipeline if isinstance(service_redis, RedisCluster) else Pipeline
    real_execute, real_command = pipeline.execute, type(service_redis).execute_command

    async def count_execute(self: Any, *a: Any, **kw: Any) -> Any:
        trips["pipeline"] += 1
        trips["commands"] += len(self)
        return await real_execute(self, *a, **kw)

    async def count_command(self: Any, *a: Any, **kw: Any) -> Any:
        trips[str(a[0])] += 1
        return await real_command(self, *a, **kw)

    monkeypatch.setattr(pipeline, "execute", count_execute)
    monkeypatch.setattr(type(service_redis), "execute_command", count_command)
    items = [item(users[i % 50], "0.001", f"r{i}") for i in range(1000)]
    r = await client.post(BATCH, json={"debits": items})
    monkeypatch.undo()
    assert r.status_code == 200
    assert r.json()["succeeded"] == 1000
    shards = {keys.user_stream(u) for u in users}
    assert trips == {"pipeline": 1, "commands": len(shards)}
    bal = await client.get("/api/v1/credits/balance", params={"user_id": "w0"})
    assert bal.json()["credits_remaining"] == "4.980000"  # 20 debits of 0.001


async def test_cold_users_are_hydrated_and_retried(client: Client, pool: asyncpg.Pool) -> None:
    items = [item(f"cold{i % 5}", "0.5", f"r{i}") for i in range(20)]
    r = await client.post(BATCH, json={"debits": items})
    assert Counter(x["status"] for x in r.json()["results"]) == {200: 20}
    assert await pool.fetchval("SELECT count(*) FROM user_credits") == 5


async def test_scripts_flushed_from_redis_are_reloaded(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool
) -> None:
    with private_redis() as url:  # SCRIPT FLUSH must not touch the shared server
        async with gateway(settings, clock, redis_url=url) as c:
            await c.get("/api/v1/credits/balance", params={"user_id": "s"})
            await c.app.state.services.redis.script_flush()
            r = await c.post(BATCH, json={"debits": [item("s", "1", "x")]})
            assert r.json()["results"][0]["status"] == 200
            await c.app.state.services.flusher.flush()


@pytest.mark.parametrize(
    "body", [{"debits": []}, {"debits": [item("x", "1", "r")] * 1001}, {}, {"debits": "x"}]
)
async def test_bad_batches_are_400(client: Client, body: Any) -> None:
    assert (await client.post(BATCH, json=body)).status_code == 400
