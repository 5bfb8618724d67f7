"""Durable acknowledgements (METERING_REDIS_DURABILITY=replica) on a primary and a replica of the
test's own: a change is answered only once the replica has it; with the replica frozen it is a
503 (retry advice) and the flusher leaves its event in Redis; the client's retry with the same
request_id, once the replica is back, is a replay charged once. One WAIT per pipeline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from decimal import Decimal

import asyncpg
import pytest
import redis as sync_redis

from gateway.api.health import check_replication
from gateway.base.connect import connect_redis
from gateway.base.errors import REDIS_DOWN
from gateway.base.settings import Settings, durability, settings_from_env
from gateway.credits.keys import Keys, keys_of
from loadtests.topologies import PrivateCluster, PrivateReplicated
from tests.books import assert_books_balance
from tests.conftest import FakeClock, gateway


@pytest.fixture
def pair() -> Iterator[PrivateReplicated]:
    servers = PrivateReplicated()
    servers.start()
    try:
        yield servers
    finally:
        servers.close()


async def books(pool: asyncpg.Pool, url: str, keys: Keys) -> int:
    """The books check on this Redis: the number of users, each straight."""
    redis = connect_redis(url, 5)
    try:
        return await assert_books_balance(pool, redis, keys)
    finally:
        await redis.aclose()


def waits(port: int) -> int:
    """WAIT commands the server has run so far."""
    client = sync_redis.Redis(port=port)
    try:
        return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))
    finally:
        client.close()


def test_the_mode_follows_the_topology_unless_set() -> None:
    assert durability(settings_from_env({})) == "primary"
    for url in ("redis+sentinel://a:1/m", "redis+cluster://a:1"):
        assert durability(settings_from_env({"METERING_REDIS_URL": url})) == "replica"
    env = {"METERING_REDIS_URL": "redis+cluster://a:1", "METERING_REDIS_DURABILITY": "primary"}
    assert durability(settings_from_env(env)) == "primary"
    for bad, says in (
        ({"METERING_REDIS_DURABILITY": "quorum"}, "at METERING_REDIS_DURABILITY"),
        ({"METERING_REDIS_WAIT_REPLICAS": "0"}, "METERING_REDIS_WAIT_REPLICAS must be >= 1"),
        ({"METERING_REDIS_WAIT_MS": "2000"}, "below METERING_REDIS_TIMEOUT"),
    ):
        with pytest.raises(SystemExit, match=says):
            settings_from_env(bad)


async def test_a_change_is_answered_once_the_replica_has_it(
    pair: PrivateReplicated, settings: Settings, clock: FakeClock, pool: asyncpg.Pool
) -> None:
    body = {"user_id": "dur", "amount": "0.25", "request_id": "d1"}
    async with gateway(
        settings, clock, redis_url=pair.url, redis_durability="replica", redis_wait_ms=150
    ) as c:
        assert (await c.post("/api/v1/credits/debit", json=body)).status_code == 200
        pair.freeze()
        try:
            body2 = {**body, "request_id": "d2"}
            r = await c.post("/api/v1/credits/debit", json=body2)
            assert r.status_code == 503 and r.json()["detail"] == REDIS_DOWN
            batch = await c.post(
                "/api/v1/credits/debit/batch",
                json={"debits": [{**body, "request_id": "b1"}, {**body, "request_id": "b2"}]},
            )
            assert batch.status_code == 503, batch.text
            flusher = c.app.state.services.flusher
            stats = await flusher.flush()
            assert stats.unreplicated_shards and stats.events == 0  # nothing booked yet
            # retries before the replica is back: still 503, never a second charge
            assert (await c.post("/api/v1/credits/debit", json=body2)).status_code == 503
        finally:
            pair.thaw()
        retry = await c.post("/api/v1/credits/debit", json=body2)
        assert retry.status_code == 200 and retry.json()["replayed"] is True
        assert Decimal(retry.json()["credits_remaining"]) == Decimal("4.5")  # charged once
        again = await c.post(
            "/api/v1/credits/debit/batch",
            json={"debits": [{**body, "request_id": "b1"}, {**body, "request_id": "b2"}]},
        )
        assert again.status_code == 200
        await flusher.flush()
        balance = await c.get("/api/v1/credits/balance", params={"user_id": "dur"})
        assert Decimal(balance.json()["credits_remaining"]) == Decimal("4.0")
    assert await books(pool, pair.url, keys_of(settings)) == 1


async def test_one_wait_per_pipeline_not_per_request(
    pair: PrivateReplicated, settings: Settings, clock: FakeClock, pool: asyncpg.Pool
) -> None:
    async with gateway(settings, clock, redis_url=pair.url, redis_durability="replica") as c:
        warm = {"user_id": "w0", "amount": "0.01", "request_id": "warm"}
        assert (await c.post("/api/v1/credits/debit", json=warm)).status_code == 200
        acks = c.app.state.services.credits.coalescer.durable
        before, pipelines = waits(pair.primary.port), acks.pipelines
        answers = await asyncio.gather(
            *(
                c.post(
                    "/api/v1/credits/debit",
                    json={"user_id": f"w{i % 7}", "amount": "0.01", "request_id": f"w{i}"},
                )
                for i in range(200)
            )
        )
        assert {a.status_code for a in answers} == {200}
        sent = acks.pipelines - pipelines
        assert waits(pair.primary.port) - before == sent < 200
        await c.app.state.services.flusher.flush()
    assert await books(pool, pair.url, keys_of(settings)) == 7


async def test_primary_mode_never_waits(
    pair: PrivateReplicated, settings: Settings, clock: FakeClock, pool: asyncpg.Pool
) -> None:
    """The measured trade: without WAIT a frozen replica does not hold debits up, and what
    the primary took can be lost with it (tests/faults/test_failover.py measures how much)."""
    async with gateway(settings, clock, redis_url=pair.url, redis_durability="primary") as c:
        pair.freeze()
        try:
            r = await c.post(
                "/api/v1/credits/debit",
                json={"user_id": "p", "amount": "0.01", "request_id": "p1"},
            )
            assert r.status_code == 200
        finally:
            pair.thaw()
        assert waits(pair.primary.port) == 0
        await c.app.state.services.flusher.flush()
    assert await books(pool, pair.url, keys_of(settings)) == 1


async def test_start_up_names_what_puts_money_at_risk(
    pair: PrivateReplicated, caplog: pytest.LogCaptureFixture
) -> None:
    redis = connect_redis(pair.url, 5)
    try:
        with caplog.at_level(logging.WARNING, "metering.health"):
            found = await check_replication(redis, "replica", 2)
        assert found == {"checked": True, "replicas": [1], "short": 1, "unguarded": 1}
        assert "fewer than 2 replica(s)" in caplog.text
        assert "min-replicas-to-write 1" in caplog.text
        caplog.clear()
        await redis.config_set("min-replicas-to-write", 1)
        with caplog.at_level(logging.WARNING, "metering.health"):
            found = await check_replication(redis, "primary", 1)
        assert found["unguarded"] == 0 and "a failover can lose" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.WARNING, "metering.health"):
            assert (await check_replication(redis, "replica", 1))["short"] == 0
        assert caplog.text == ""
    finally:
        await redis.aclose()


async def test_on_a_cluster_one_wait_per_pipeline_per_node(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool
) -> None:
    """A 3+3 cluster: each coalesced pipeline is split by node, and each node's part ends with
    its own WAIT, on that node; every call is answered and the books balance."""
    cluster = PrivateCluster(3, replicas=1, node_timeout_ms=2000)
    cluster.start()
    try:
        async with gateway(
            settings, clock, redis_url=cluster.url, redis_durability="replica", shards=16
        ) as c:
            warm = [
                c.post(
                    "/api/v1/credits/debit",
                    json={"user_id": f"n{i}", "amount": "0.01", "request_id": "warm"},
                )
                for i in range(16)
            ]
            assert {r.status_code for r in await asyncio.gather(*warm)} == {200}
            acks = c.app.state.services.credits.coalescer.durable
            masters = cluster.masters()
            before = {m.port: waits(m.port) for m in masters}
            pipelines = acks.pipelines
            answers = await asyncio.gather(
                *(
                    c.post(
                        "/api/v1/credits/debit",
                        json={"user_id": f"n{i % 16}", "amount": "0.01", "request_id": f"c{i}"},
                    )
                    for i in range(300)
                )
            )
            assert {a.status_code for a in answers} == {200}
            per_node = {m.port: waits(m.port) - before[m.port] for m in masters}
            assert sum(per_node.values()) == acks.pipelines - pipelines < 300
            assert all(n > 0 for n in per_node.values()), per_node  # each node waited for its own
            await c.app.state.services.flusher.flush()
        assert await books(pool, cluster.url, Keys(settings.key_prefix, 16)) == 16
    finally:
        cluster.close()
