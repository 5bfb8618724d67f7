"""`metering dead-letters list|replay|drop` on events PostgreSQL refused: an operator reads
them, fixes the cause, replays them (once, however often asked) or drops them; every action
is in the audit log, and the books balance afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import asyncpg
from redis.asyncio import Redis

from gateway.base.settings import Settings
from gateway.credits.keys import Keys, shard_of
from gateway.flusher.flush import Flusher
from persistence.events import SEP, fields, line_of
from tests.conftest import Client


async def metering(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "METERING_DATABASE_URL": settings.database_url,
        "METERING_REDIS_URL": settings.redis_url,
        "METERING_REDIS_DURABILITY": "primary",  # the tests' cluster has no replicas
        "METERING_KEY_PREFIX": settings.key_prefix,
        "METERING_SHARDS": str(settings.shards),
    }
    command = [sys.executable, "-m", "gateway.ops.cli", "dead-letters", *args]
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=60, env=env
    )


async def listed(settings: Settings) -> list[dict[str, str]]:
    out = await metering(settings, "list")
    assert out.returncode == 0, out.stderr
    found: list[dict[str, str]] = json.loads(out.stdout)
    return found


async def debit(client: Client, user: str, amount: str, request_id: str) -> None:
    r = await client.post(
        "/api/v1/credits/debit",
        json={"user_id": user, "amount": amount, "request_id": request_id},
    )
    assert r.status_code == 200, r.text


async def test_a_refused_event_is_replayed_once_after_its_cause_is_fixed(
    client: Client, settings: Settings, pool: asyncpg.Pool, redis: Redis
) -> None:
    """The user's rows vanish from PostgreSQL (an older backup restored) before their debits
    are flushed: PostgreSQL refuses them and they are set aside. Once the rows are back, a
    replay puts each event back once (a second replay finds it gone) and the flush books it."""
    flusher: Flusher = client.app.state.services.flusher
    await debit(client, "dl-user", "1", "dl-1")
    await flusher.flush()
    saved = await pool.fetchval(
        "SELECT row_to_json(u)::text FROM user_credits u WHERE user_id = 'dl-user'"
    )
    ledger = await pool.fetch(
        "SELECT row_to_json(t)::text AS r FROM credit_transactions t WHERE user_id = 'dl-user'"
    )
    await pool.execute("DELETE FROM credit_transactions WHERE user_id = 'dl-user'")
    await pool.execute("DELETE FROM user_credits WHERE user_id = 'dl-user'")
    await debit(client, "dl-user", "0.25", "dl-2")
    await debit(client, "dl-user", "0.5", "dl-3")
    assert (await flusher.flush()).dead == 2
    dead = await listed(settings)
    assert [d["rid"] for d in dead] == ["dl-2", "dl-3"]
    assert dead[0]["u"] == "dl-user" and "ForeignKeyViolation" in dead[0]["error"]
    assert dead[0]["ref"].startswith(f"{shard_of('dl-user', settings.shards)}/")

    await pool.execute(  # the fix: the rows are restored
        "INSERT INTO user_credits SELECT * FROM json_populate_record(null::user_credits, $1)",
        saved,
    )
    for row in ledger:
        await pool.execute(
            "INSERT INTO credit_transactions "
            "SELECT * FROM json_populate_record(null::credit_transactions, $1)",
            row["r"],
        )
    refs = [d["ref"] for d in dead]
    out = await metering(settings, "replay", *refs)
    assert out.returncode == 0 and out.stdout.count("replayed as") == 2, out.stderr
    again = await metering(settings, "replay", refs[0])  # idempotent: gone, nothing done
    assert again.returncode == 0 and "gone already" in again.stdout
    assert await listed(settings) == []
    stats = await flusher.flush()
    assert (stats.dead, stats.inserted) == (0, 2)
    charged = await pool.fetch(
        "SELECT request_id FROM credit_transactions WHERE user_id = 'dl-user'"
        " AND transaction_type = 'usage' ORDER BY request_id"
    )
    assert [r["request_id"] for r in charged] == ["dl-1", "dl-2", "dl-3"]
    audited = await pool.fetch(
        "SELECT actor, target, request_id, amount FROM audit_log WHERE action = "
        "'dead_letter.replay' ORDER BY request_id"
    )
    assert [(a["target"], a["request_id"], str(a["amount"])) for a in audited] == [
        (refs[0], "dl-2", "-0.250000"),
        (refs[1], "dl-3", "-0.500000"),
    ]
    assert all(a["actor"].startswith("cli:") for a in audited)


async def test_an_unfixable_event_is_dropped_audited_and_bad_refs_are_refused(
    client: Client, settings: Settings, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    """An event for a user PostgreSQL never had (a malformed or foreign line): replayed, it is
    set aside again; dropped, it is gone for good, with an audit row; a reference that is not
    one gets a one-line 2."""
    await debit(client, "dl-other", "1", "dl-o1")
    stream = keys.user_stream("dl-other")
    values = fields(line_of((await redis.xrange(stream, count=1))[0][1]))
    values.update(u="dl-ghost", tx="00000000-0000-0000-0000-0000000000dd", rid="ghost-1")
    await redis.xadd(stream, {"e": SEP.join(values.values())})
    flusher: Flusher = client.app.state.services.flusher
    assert (await flusher.flush()).dead == 1
    [ghost] = await listed(settings)
    assert (await metering(settings, "replay", ghost["ref"])).returncode == 0
    assert (await flusher.flush()).dead == 1  # refused again: set aside under a new id
    [ghost] = await listed(settings)
    out = await metering(settings, "drop", ghost["ref"])
    assert out.returncode == 0 and "dropped" in out.stdout, out.stderr
    again = await metering(settings, "drop", ghost["ref"])
    assert again.returncode == 0 and "gone already" in again.stdout
    assert await listed(settings) == []
    row = await pool.fetchrow(
        "SELECT user_id, details FROM audit_log WHERE action = 'dead_letter.drop'"
    )
    assert row is not None and row["user_id"] == "dl-ghost"
    assert "ForeignKeyViolation" in json.loads(row["details"])["error"]
    bad = await metering(settings, "replay", "99/1-1")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "SHARD/ID" in bad.stderr
