"""Redis behind Sentinel (a primary, a replica, three sentinels of the test's own): the gateway
finds the primary through ``redis+sentinel://``, follows a promotion by itself when the primary
is killed, and keeps away from the old primary when it comes back from its AOF (Sentinel makes
it a replica). Debits during the failover are answered 200 or 503 (retry advice), never 500; a
client retrying a 503 with the same request_id is charged once; the books balance after."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from gateway.base.connect import connect_redis, sentinel_target
from gateway.base.sentinels import NewestConfigSentinel, follow_primary
from gateway.base.settings import Settings, settings_from_env
from gateway.credits.keys import keys_of
from loadtests.servers import PrivateRedis, free_port, wait_until
from loadtests.topologies import PrivateSentinels
from tests.books import assert_books_balance
from tests.conftest import FakeClock, gateway

USERS = [f"sen{i}" for i in range(6)]


@pytest.fixture
def sentinels() -> Iterator[PrivateSentinels]:
    group = PrivateSentinels(down_after_ms=1000)
    group.start()
    try:
        yield group
    finally:
        group.close()


async def charge(c: httpx.AsyncClient, user: str, request_id: str) -> tuple[int, list[int]]:
    """A careful client: retries a 503 with the same request_id until it is answered."""
    seen = []
    body = {"user_id": user, "amount": "0.01", "request_id": request_id}
    for _ in range(400):
        r = await c.post("/api/v1/credits/debit", json=body)
        seen.append(r.status_code)
        if r.status_code != 503:
            return r.status_code, seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"{request_id} never answered: {seen[-5:]}")


def test_the_sentinel_url_is_read_as_written() -> None:
    target = sentinel_target("redis+sentinel://:pw@a:26379,b:26380/metering/3")
    assert target.sentinels == [("a", 26379), ("b", 26380)] and target.service == "metering"
    assert (target.db, target.password, target.tls) == (3, "pw", False)
    for bad in ("redis+sentinel://a:1", "redis+sentinel://a/x", "redis+sentinel://a:1/x/y"):
        with pytest.raises(ValueError, match="METERING_REDIS_URL"):
            sentinel_target(bad)
        with pytest.raises(SystemExit, match="invalid configuration: METERING_REDIS_URL"):
            settings_from_env({"METERING_REDIS_URL": bad})  # refused at start-up, in one line
    with pytest.raises(SystemExit, match="'memcached' is not one of"):
        settings_from_env({"METERING_REDIS_URL": "memcached://x"})


async def test_a_failover_is_followed_and_no_debit_is_lost_or_doubled(
    sentinels: PrivateSentinels, settings: Settings, clock: FakeClock, pool: asyncpg.Pool
) -> None:
    first = sentinels.primary_port()
    statuses: list[int] = []
    acknowledged = 0
    async with gateway(settings, clock, redis_url=sentinels.url, redis_timeout=0.5) as c:
        for i in range(30):
            code, seen = await charge(c, USERS[i % 6], f"before-{i}")
            assert code == 200
            statuses += seen
            acknowledged += 1
        sentinels.in_sync()  # primary mode: only what reached the replica survives a kill
        sentinels.primary.stop(signal.SIGKILL)
        started = time.monotonic()
        for i in range(30):
            code, seen = await charge(c, USERS[i % 6], f"during-{i}")
            assert code == 200
            statuses += seen
            acknowledged += 1
        took = time.monotonic() - started
        assert sentinels.primary_port() != first  # the replica was promoted
        sentinels.primary.start()  # the old primary, back from its AOF with its old data
        for i in range(30):
            code, seen = await charge(c, USERS[i % 6], f"after-{i}")
            assert code == 200
            statuses += seen
            acknowledged += 1
        await c.app.state.services.flusher.flush()
        for user in USERS:  # 15 debits of 0.01 each, once each
            balance = await c.get("/api/v1/credits/balance", params={"user_id": user})
            assert Decimal(balance.json()["credits_remaining"]) == Decimal("4.85"), user
    assert set(statuses) <= {200, 503}, statuses  # never a 500
    assert statuses.count(503) >= 1 and acknowledged == 90
    assert took < 30, took
    print(f"failover: {took:.1f} s without service, {statuses.count(503)} answers of 503")
    redis = connect_redis(sentinels.url, 5)
    try:
        keys = keys_of(settings)
        assert await assert_books_balance(pool, redis, keys) == len(USERS)
    finally:
        await redis.aclose()


async def test_the_newest_configuration_names_the_primary_and_stale_connections_move(
    sentinels: PrivateSentinels,
) -> None:
    """A sentinel that names an old primary (here one of its own world, at config epoch 0,
    watching a server nobody else does) listed first: redis-py's own Sentinel takes its answer
    and connects there; NewestConfigSentinel takes the group's, newer after a failover, and
    follow_primary moves a client whose connections lead elsewhere to the primary it names."""
    group = sentinels
    zombie = PrivateRedis()
    zombie.start()
    stale_port = free_port()
    conf = Path(group.dir) / "stale.conf"
    conf.write_text(
        f"port {stale_port}\nbind 127.0.0.1\ndir {group.dir}\n"
        f"sentinel monitor {group.SERVICE} 127.0.0.1 {zombie.port} 1\n"
    )
    stale = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    clients: list[Redis] = []
    try:
        ask = redis.Redis(port=group.sentinels[0], decode_responses=True)
        ask.execute_command("SENTINEL", "FAILOVER", group.SERVICE)
        ask.close()

        def names(port: int, server: int) -> bool:
            c = redis.Redis(port=port, decode_responses=True)
            try:
                answer = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", group.SERVICE)
                return int(answer[1]) == server
            finally:
                c.close()

        promoted = group.replica.port
        wait_until(lambda: all(names(p, promoted) for p in group.sentinels), "the failover")
        wait_until(lambda: names(stale_port, zombie.port), "the stale sentinel")
        listed = [("127.0.0.1", stale_port), *(("127.0.0.1", p) for p in group.sentinels)]
        plain = Sentinel(listed)  # type: ignore[no-untyped-call]
        newest = NewestConfigSentinel(listed)  # type: ignore[no-untyped-call]
        assert await plain.discover_master(group.SERVICE) == ("127.0.0.1", zombie.port)
        assert await newest.discover_master(group.SERVICE) == ("127.0.0.1", promoted)

        client: Redis = plain.master_for(group.SERVICE, redis_class=Redis, decode_responses=True)
        clients.append(client)
        await client.set("k", "stale")  # on the server the first sentinel named
        client.connection_pool.sentinel_manager = newest  # type: ignore[attr-defined]
        assert await follow_primary(client)
        await client.set("k", "named")
        assert not await follow_primary(client)  # where the sentinels say: nothing to do
        for port, value in ((zombie.port, "stale"), (promoted, "named")):
            direct = redis.Redis(port=port, decode_responses=True)
            assert direct.get("k") == value
            direct.close()
        single = connect_redis(zombie.url, 5)
        clients.append(single)
        assert not await follow_primary(single)  # not a Sentinel group: nothing to follow
    finally:
        for c in clients:
            await c.aclose()
        stale.kill()
        stale.wait(timeout=20)
        zombie.close()
