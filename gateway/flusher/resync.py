"""Resyncs: after a failover whose promoted replica lacked changes the flusher had already booked
(primary mode, or a replica promoted past what it confirmed), the user's Redis state is behind
PostgreSQL's, and its next events carry versions PostgreSQL has passed. The flush that books such
an event (persistence/batch_queries.py, ``regressed``) gives Redis the difference in the same
transaction: resync.lua moves the balance by the ledger's sum less Redis's balance at the last
entry flushed, and jumps the version above PostgreSQL's (the fence). PostgreSQL's row takes the
ledger's sum now and Redis's state when the resync event is flushed; until then the user's older
events go into the ledger without moving the row. Each resync is a row of redis_resyncs and, once
flushed, a 'resync' ledger entry (amount 0) and an audit entry.

The difference is measured on Redis's own state, so asking twice (a flush rolled back after the
script ran, or a resync already under way) corrects nothing twice: the script answers 'same', or
finds nothing left to correct.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from gateway.base.metrics import RESYNCS
from gateway.credits.ids import new_id
from gateway.credits.keys import Keys
from gateway.credits.money import to_micro
from gateway.credits.scripts import Scripts
from persistence import queries
from persistence.db import Executor
from persistence.ledger import ledger_sum

log = logging.getLogger("metering.resync")

ACTOR = "system:failover"  # the audit log's actor of the flusher's resyncs


async def resync_users(
    conn: Executor,
    scripts: Scripts,
    keys: Keys,
    users: Iterable[str],
    last_entry: str,
) -> int:
    """Resync each user, in the flush's transaction (after its batch, up to stream entry
    last_entry, was applied). Returns how many were corrected."""
    corrected = 0
    for user in users:
        answer = await resync_user(conn, scripts, keys, user, last_entry, last_entry, ACTOR)
        if answer is None:
            continue  # Redis agrees, or no longer holds the user (loaded again from here)
        corrected += 1
        RESYNCS.inc()
        log.warning(
            "Redis had lost booked changes of a user (a failover): its balance was moved by "
            "%s micro-credits to the ledger's, its version to %d",
            answer[1],
            answer[0],
            extra={"user_id": user},
        )
    return corrected


async def resync_user(
    conn: Executor,
    scripts: Scripts,
    keys: Keys,
    user: str,
    after_entry: str,
    resync_id: str,
    actor: str,
) -> tuple[int, int] | None:
    """Give Redis the difference between the user's ledger and its balance at stream entry
    after_entry ('0-0': before all that is unflushed), in the caller's transaction; the fence
    and the correction (micro), or None when Redis agrees or does not hold the user."""
    total, _ = await ledger_sum(conn, user)
    pg_version = await conn.fetchval(queries.USER_VERSION, user)
    answer = await scripts.resync(
        keys=[keys.user(user), keys.user_stream(user)],
        args=[
            user,
            0,
            "month",
            new_id(),
            to_micro(total),
            pg_version,
            after_entry,
            resync_id,
            actor,
        ],
    )
    if answer[0] not in ("ok", "same"):
        return None
    fence, delta = int(answer[1]), int(answer[2])
    await conn.execute(queries.RESYNC_RECORD, user, fence, delta, after_entry, total)
    return fence, delta
