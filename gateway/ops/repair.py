"""`metering reconcile [--repair]`: compare every user's Redis state with PostgreSQL's and its
ledger (gateway/ops/reconcile.py) and, with --repair, bring each drifted user back to
PostgreSQL's truth, its ledger: Redis is given the difference by the resync script
(gateway/flusher/resync.py), a user PostgreSQL alone holds gets its row set to the ledger's sum.
Each repair holds the user's shard's flush lock, is audited (credit.repair, by cli:<login>), and
is followed by a flush and a second comparison, whose result decides the exit code.
"""

from __future__ import annotations

import getpass
import json
from typing import Any

import asyncpg
from redis.asyncio import Redis

from gateway.base.connect import connect_redis
from gateway.base.settings import Settings
from gateway.credits.ids import new_id
from gateway.credits.keys import Keys, keys_of
from gateway.credits.money import to_decimal
from gateway.credits.scripts import Scripts
from gateway.credits.tiers import load_tiers
from gateway.flusher.background import make_flusher
from gateway.flusher.resync import resync_user
from gateway.ops.reconcile import PARTS, Report, reconcile
from persistence import db, queries
from persistence.ledger import ledger_sum

# what a repair can mend: the balance, version or blocks Redis and PostgreSQL disagree on, and
# a row that is not its ledger's sum (a negative balance is the truth, to look at, not to mend)
MENDABLE = (
    "ledger does not sum to the PostgreSQL balance",
    "Redis and PostgreSQL differ",
    "credit blocks differ between Redis and PostgreSQL",
    "credit blocks in PostgreSQL do not sum to the balance",
)


async def repair(redis: Redis, pool: asyncpg.Pool, keys: Keys, report: Report, actor: str) -> int:
    """Mend each drifted user of the report; returns how many were mended."""
    users = sorted({str(d["user_id"]) for d in report.drift if d.get("problem") in MENDABLE})
    scripts = Scripts(redis)
    mended = 0
    for user in users:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(queries.FLUSH_LOCK_WAIT, keys.user_stream(user))
            answer = await resync_user(
                conn, scripts, keys, user, "0-0", f"repair:{new_id()}", actor
            )
            if answer is not None:
                fence, delta = answer
                details = {"fence": fence, "delta": str(to_decimal(delta)), "in": "redis"}
            else:  # Redis agrees with the ledger, or does not hold the user: mend the row
                total, _ = await ledger_sum(conn, user)
                before = await conn.fetchval(queries.USER_GET_BALANCE, user)
                if before == total:
                    continue
                await conn.execute(queries.USER_SET_BALANCE, user, total)
                details = {"before": str(before), "after": str(total), "in": "postgresql"}
            await conn.execute(
                queries.AUDIT_OPERATOR,
                actor,
                "credit.repair",
                user,
                None,
                None,
                None,
                json.dumps(details),
            )
            mended += 1
    return mended


async def reconcile_command(
    settings: Settings, flush: bool, fix: bool, deep: bool = False
) -> tuple[bool, dict[str, Any]]:
    redis = connect_redis(settings.redis_url, settings.redis_timeout)
    pool = await db.open_pool(settings.database_url, max_size=PARTS + 1)
    keys = keys_of(settings)
    flusher = make_flusher(settings, redis, pool, load_tiers(settings.tiers_file))
    try:
        if flush:
            await flusher.flush()
        report = await reconcile(redis, pool, keys, deep)
        summary: dict[str, Any] = {
            "users": report.users,
            "backlog": report.backlog,
            "drift": report.drift,
        }
        if fix and report.drift:
            summary["repaired"] = await repair(
                redis, pool, keys, report, f"cli:{getpass.getuser()}"
            )
            await flusher.flush()  # the resync events, so that the second look sees them
            report = await reconcile(redis, pool, keys, deep)
            summary["drift_after_repair"] = report.drift
        return report.ok, summary
    finally:
        if flusher.acks is not None:
            await flusher.acks.aclose()
        await redis.aclose()
        await pool.close()
