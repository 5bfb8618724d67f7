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
from typing import Any

from asyncpg.pool import PoolConnectionProxy

from gateway.base.metrics import RESYNCS
from gateway.credits.ids import new_id
from gateway.credits.keys import Keys
from gateway.credits.money import to_micro
from gateway.credits.scripts import Scripts
from persistence import queries
from persistence.ledger import ledger_sum

log = logging.getLogger("metering.resync")


async def resync_users(
    conn: PoolConnectionProxy[Any],
    scripts: Scripts,
    keys: Keys,
    users: Iterable[str],
    last_entry: str,
) -> int:
    """Resync each user, in the flush's transaction (after its batch, up to stream entry
    last_entry, was applied). Returns how many were corrected."""
    corrected = 0
    for user in users:
        total, _ = await ledger_sum(conn, user)
        pg_version = await conn.fetchval(queries.USER_VERSION, user)
        answer = await scripts.resync(
            keys=[keys.user(user), keys.user_stream(user)],
            args=[user, 0, "month", new_id(), to_micro(total), pg_version, last_entry, last_entry],
        )
        if answer[0] not in ("ok", "same"):
            continue  # Redis agrees, or no longer holds the user (loaded again from here)
        fence, delta = int(answer[1]), int(answer[2])
        await conn.execute(queries.RESYNC_RECORD, user, fence, delta, last_entry, total)
        corrected += 1
        RESYNCS.inc()
        log.warning(
            "Redis had lost booked changes of a user (a failover): its balance was moved by "
            "%s micro-credits to the ledger's, its version to %d",
            delta,
            fence,
            extra={"user_id": user},
        )
    return corrected
