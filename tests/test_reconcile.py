"""`metering reconcile`: silent when the books balance, exit 1 with the drift when not."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from collections import Counter
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.base.settings import Settings
from gateway.credits.keys import Keys, shard_of
from gateway.ops import reconcile as reconcile_module
from gateway.ops.reconcile import reconcile
from tests.conftest import BACKENDS, Client

# on one Redis and on a Redis Cluster of 3 masters
pytestmark = pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)


def run_reconcile(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "METERING_DATABASE_URL": settings.database_url,
        "METERING_REDIS_URL": settings.redis_url,
        "METERING_REDIS_DURABILITY": "primary",  # the tests' cluster has no replicas
        "METERING_KEY_PREFIX": settings.key_prefix,
        "METERING_SHARDS": str(settings.shards),
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway.ops.cli", "reconcile"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_reconcile_passes_then_finds_each_kind_of_drift(
    client: Client, settings: Settings, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    for user in ("a", "b", "c", "d", "e", "f"):
        await client.post(
            "/api/v1/credits/debit", json={"user_id": user, "amount": "1", "request_id": "r"}
        )
    ok = run_reconcile(settings)  # flushes first, then compares
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert '"users": 6' in ok.stdout

    await redis.hset(keys.user("a"), "bal", "1")  # Redis drifted
    await pool.execute("UPDATE user_credits SET credits_remaining = 9 WHERE user_id = 'b'")
    await redis.hset(keys.user("ghost"), mapping={"bal": "0", "ver": "0"})
    await pool.execute(
        "UPDATE usage_summaries SET credits = credits + 0.000001 WHERE user_id = 'c'"
    )
    await pool.execute("UPDATE ledger_totals SET entries = entries + 1 WHERE user_id = 'c'")
    # the same sums, another block's id; a version alone
    await pool.execute("UPDATE credit_grants SET id = id || '-x' WHERE user_id = 'd'")
    await redis.hincrby(keys.user("e"), "ver", 1)
    blks = await redis.hget(keys.user("f"), "blks")  # one more micro-credit in its block
    rem, rest = blks.split(":", 1)
    await redis.hset(keys.user("f"), "blks", f"{int(rem) + 1}:{rest}")
    bad = run_reconcile(settings)
    assert bad.returncode == 1
    assert not (await reconcile(redis, pool, keys)).ok
    report = await reconcile(redis, pool, keys, deep=True)
    problems = sorted((d.get("user_id") or d.get("key"), d["problem"]) for d in report.drift)
    assert problems == sorted(
        [
            ("a", "Redis and PostgreSQL differ"),
            ("a", "credit blocks in Redis do not sum to the balance"),
            ("b", "ledger does not sum to the PostgreSQL balance"),
            ("b", "Redis and PostgreSQL differ"),
            ("b", "credit blocks in PostgreSQL do not sum to the balance"),
            (keys.user("ghost"), "in Redis but not in PostgreSQL"),
            ("d", "credit blocks differ between Redis and PostgreSQL"),
            ("e", "Redis and PostgreSQL differ"),
            ("f", "credit blocks in Redis do not sum to the balance"),
            ("f", "credit blocks differ between Redis and PostgreSQL"),
            # the ledger's side and the summary's, of the hour and of the day
            *[("c", "usage summary differs from the ledger")] * 4,
            *[("c", "ledger total differs from the ledger")] * 2,  # both sides
        ]
    )
    # with events left to flush, versions and blocks may differ: what must hold still does
    await client.post(
        "/api/v1/credits/debit", json={"user_id": "g", "amount": "1", "request_id": "r"}
    )
    report = await reconcile(redis, pool, keys)
    assert report.backlog == 1
    assert sorted((d.get("user_id") or d.get("key"), d["problem"]) for d in report.drift) == [
        ("a", "credit blocks in Redis do not sum to the balance"),
        ("b", "credit blocks in PostgreSQL do not sum to the balance"),
        ("b", "ledger does not sum to the PostgreSQL balance"),
        ("f", "credit blocks in Redis do not sum to the balance"),
        (keys.user("ghost"), "in Redis but not in PostgreSQL"),
    ]
    # put things back so the fixture's closing books check passes
    await redis.delete(keys.user("ghost"))
    await redis.hset(keys.user("a"), "bal", "4000000")
    await pool.execute("UPDATE user_credits SET credits_remaining = 4 WHERE user_id = 'b'")
    await pool.execute(
        "UPDATE usage_summaries SET credits = credits - 0.000001 WHERE user_id = 'c'"
    )
    await pool.execute("UPDATE ledger_totals SET entries = entries - 1 WHERE user_id = 'c'")
    await pool.execute("UPDATE credit_grants SET id = left(id, -2) WHERE user_id = 'd'")
    await redis.hincrby(keys.user("e"), "ver", -1)
    await redis.hset(keys.user("f"), "blks", blks)


def run_cli(settings: Settings, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "METERING_DATABASE_URL": settings.database_url, **extra}
    return subprocess.run(
        [sys.executable, "-m", "gateway.ops.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_keys_from_the_command_line(
    client: Client, settings: Settings, pool: asyncpg.Pool
) -> None:
    made = run_cli(settings, "keys", "create", "ops-cli", "--scope", "read", "--scope", "debit")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["key"]
    r = await client.get("/api/v1/tiers", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    listed = run_cli(settings, "keys", "list")
    assert "ops-cli" in listed.stdout and key not in listed.stdout
    assert run_cli(settings, "keys", "create", "ops-cli", "--scope", "read").returncode == 1
    assert run_cli(settings, "keys", "revoke", "ops-cli").returncode == 0
    assert run_cli(settings, "keys", "revoke", "ops-cli").returncode == 1
    actors = await pool.fetch("SELECT actor, action FROM audit_log ORDER BY at")
    assert [a["action"] for a in actors] == ["key.create", "key.revoke"]
    assert all(a["actor"].startswith("cli:") for a in actors)


async def test_inspect_shows_both_sides_and_raw_keys(client: Client, settings: Settings) -> None:
    await client.post(
        "/api/v1/credits/debit", json={"user_id": "ins", "amount": "1", "request_id": "r1"}
    )
    env_args = ("inspect", "ins", "--raw")
    env = {
        **os.environ,
        "METERING_DATABASE_URL": settings.database_url,
        "METERING_REDIS_URL": settings.redis_url,
        "METERING_REDIS_DURABILITY": "primary",  # the tests' cluster has no replicas
        "METERING_KEY_PREFIX": settings.key_prefix,
        "METERING_SHARDS": str(settings.shards),
    }
    out = subprocess.run(
        [sys.executable, "-m", "gateway.ops.cli", *env_args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["redis"]["bal"] == "4000000"
    assert report["postgres"]["credits_remaining"] == "5.000000"  # not flushed yet
    assert report["unflushed_events_in_shard"] == 1
    assert "digest" in report["raw"]["idempotency_records"]  # not listable per user
    # the blocks side by side: the allocation's 4.00 in Redis, 5.00 in PostgreSQL (unflushed)
    assert [(b["kind"], b["redis"], b["postgres"]) for b in report["blocks"]] == [
        ("allocation", "4.000000", "5.000000")
    ]


async def test_repair_brings_drifted_users_back_to_their_ledger(
    client: Client, settings: Settings, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    """Redis lost booked changes of a user that has not spent since (no event for the flusher
    to notice), and a row was edited by hand: --repair mends both, audited, and the second look
    finds the books straight. The fixture's books check follows."""

    async def debit(user: str, rid: str) -> None:
        r = await client.post(
            "/api/v1/credits/debit", json={"user_id": user, "amount": "0.5", "request_id": rid}
        )
        assert r.status_code == 200

    await debit("x", "x1")
    copy = await redis.hgetall(keys.user("x"))
    await debit("x", "x2")
    await debit("y", "y1")
    await client.app.state.services.flusher.flush()
    await redis.delete(keys.user("x"))
    await redis.hset(keys.user("x"), mapping=copy)  # x2 booked, then lost by Redis
    await pool.execute("UPDATE user_credits SET credits_remaining = 9 WHERE user_id = 'y'")
    assert run_reconcile(settings).returncode == 1

    env = {
        "METERING_KEY_PREFIX": settings.key_prefix,
        "METERING_SHARDS": str(settings.shards),
        "METERING_REDIS_URL": settings.redis_url,
        "METERING_REDIS_DURABILITY": "primary",
    }
    fixed = run_cli(settings, "reconcile", "--repair", **env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    summary = json.loads(fixed.stdout)
    assert summary["repaired"] == 2 and summary["drift_after_repair"] == []
    for user in ("x", "y"):
        r = await client.get("/api/v1/credits/balance", params={"user_id": user})
        assert r.json()["credits_remaining"] == ("4.000000" if user == "x" else "4.500000")
    audit = await pool.fetch(
        "SELECT user_id, action, actor FROM audit_log WHERE action IN ('credit.repair', 'resync') "
        "ORDER BY user_id, action"
    )
    assert [(a["user_id"], a["action"]) for a in audit] == [
        ("x", "credit.repair"),
        ("x", "resync"),
        ("y", "credit.repair"),
        ("y", "resync"),
    ]
    assert {a["actor"] for a in audit} == {f"cli:{getpass.getuser()}"}
    assert run_reconcile(settings).returncode == 0


async def test_redis_counts_its_users_and_only_a_shard_that_differs_is_read_back(
    client: Client,
    pool: asyncpg.Pool,
    redis: Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The users Redis holds are counted inside Redis, by shard (count_users.lua), holds,
    idempotency buckets and streams left out; the keys of a shard are read back and looked up
    in PostgreSQL only where that count differs from the users the comparison found there."""
    users = [f"n{i}" for i in range(24)]
    for user in users:
        r = await client.post(
            "/api/v1/credits/debit", json={"user_id": user, "amount": "0.5", "request_id": "r"}
        )
        assert r.status_code == 200
    await client.app.state.services.flusher.flush()
    expected = Counter(shard_of(u, keys.shards) for u in users)
    assert await reconcile_module._count_users(redis, keys) == expected
    read_back: list[int] = []
    lookup = reconcile_module._redis_only

    async def recorded(*args: Any) -> None:
        read_back.append(args[-1])
        await lookup(*args)

    monkeypatch.setattr(reconcile_module, "_redis_only", recorded)
    assert (await reconcile(redis, pool, keys)).ok
    assert read_back == []  # every shard's count agrees: no key leaves Redis
    await redis.hset(keys.user("ghost"), mapping={"bal": "0", "ver": "0"})
    report = await reconcile(redis, pool, keys)
    assert read_back == [shard_of("ghost", keys.shards)]
    assert [(d.get("key"), d["problem"]) for d in report.drift] == [
        (keys.user("ghost"), "in Redis but not in PostgreSQL")
    ]
    await redis.delete(keys.user("ghost"))
