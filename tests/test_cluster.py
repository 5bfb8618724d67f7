"""Redis Cluster specifics (the shared integration tests also run on the cluster: see BACKENDS):
the keys spread over every master, each script stays in one slot, and `metering serve` with its
flusher process runs on a cluster URL."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import asyncpg
import httpx
import pytest
import redis as redis_sync
from redis.asyncio import Redis

from gateway.credits.keys import Keys
from loadtests.topologies import PrivateCluster
from tests.books import assert_books_balance
from tests.conftest import ADMIN_KEY, Client
from tests.processes import gateway_process

on_cluster = pytest.mark.parametrize("redis_backend", ["cluster"], indirect=True)


@on_cluster
async def test_users_and_their_events_spread_over_every_master(
    client: Client, cluster: PrivateCluster, keys: Keys, pool: asyncpg.Pool, redis: Redis
) -> None:
    answers = await asyncio.gather(
        *(
            client.post(
                "/api/v1/credits/debit",
                json={"user_id": f"spread{i}", "amount": "0.5", "request_id": f"r{i}"},
            )
            for i in range(60)
        )
    )
    assert Counter(a.status_code for a in answers) == {200: 60}
    per_node: dict[int, tuple[int, int]] = {}
    for node in cluster.nodes:
        direct = redis_sync.Redis(port=node.port, decode_responses=True)
        try:
            users = sum(1 for _ in direct.scan_iter(match=f"{keys.prefix}:*:u:*", count=1000))
            events = sum(
                int(direct.xlen(k)) for k in direct.scan_iter(match=f"{keys.prefix}:*:events")
            )
        finally:
            direct.close()
        per_node[node.port] = (users, events)
    assert all(users > 0 and events > 0 for users, events in per_node.values()), per_node
    assert sum(u for u, _ in per_node.values()) == 60
    assert sum(e for _, e in per_node.values()) == 60
    await client.app.state.services.flusher.flush()
    assert await assert_books_balance(pool, redis, keys) == 60


@on_cluster
async def test_every_key_of_a_script_call_is_in_one_slot(keys: Keys, redis: Redis) -> None:
    """The keys one script touches for a user, a reservation of theirs and their shard's
    stream hash to one slot (else the cluster would refuse the call with CROSSSLOT)."""
    slot = redis.keyslot  # type: ignore[attr-defined]
    for user in ("alice", "bob:{x}", "zoë 7", "%41"):
        res = keys.reservation(keys.new_reservation_id(user))
        assert res is not None
        same = {
            keys.user(user),
            keys.request(user, "rid"),
            keys.holds(user),
            keys.refunded(user, "txn"),
            keys.user_stream(user),
            res,
        }
        assert len({slot(k) for k in same}) == 1


def test_serve_on_a_cluster_url_flushes_through_its_flusher_process(
    cluster: PrivateCluster,
) -> None:
    with gateway_process(
        workers=2,
        METERING_REDIS_URL=cluster.url,
        METERING_FLUSH_INTERVAL="0.2",
        METERING_REDIS_DURABILITY="primary",
    ) as gw:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=gw.url, headers=headers, timeout=10) as c:
            for i in range(30):
                body = {"user_id": f"srv{i % 6}", "amount": "0.25", "request_id": f"r{i}"}
                assert c.post("/api/v1/credits/debit", json=body).status_code == 200
            ready = c.get("/health/ready").json()
            assert ready["checks"]["redis"] == "ok", ready

        async def rows() -> int:
            conn = await asyncpg.connect(gw.database)
            try:
                return int(
                    await conn.fetchval(
                        "SELECT count(*) FROM credit_transactions WHERE transaction_type='usage'"
                    )
                )
            finally:
                await conn.close()

        for _ in range(100):  # the flusher process drains every shard on every node
            if asyncio.run(rows()) == 30:
                break
            time.sleep(0.1)
        assert asyncio.run(rows()) == 30
