"""Renew idle users' periods, so PostgreSQL shows the new allocation even for users who make no
request (active users renew in their first Lua call of the new period). Safe to run anywhere and
at any time: each renewal is keyed by period in Redis, so repeats change nothing."""

from __future__ import annotations

import asyncio
import logging

from gateway.credits.clock import period_start
from gateway.credits.service import CreditService
from persistence.users import open_grants, users_to_renew

log = logging.getLogger("metering.renewal")


async def renew_idle(service: CreditService, batch: int = 250) -> int:
    """Renew every user whose period ended; one Redis round trip per batch (two calls a user,
    within the coalescer's 512 a pipeline, so a user's hydrate and reset go together, in order).
    Returns how many."""
    now = await service.now()  # the scripts' clock: the same boundary for every instance
    began = period_start(now, service.period)
    after, renewed = "", 0
    while rows := await users_to_renew(service.pool, began, after, batch):
        keys = service.keys
        grants = await open_grants(service.pool, [row.user_id for row in rows])
        calls = []  # queued in order in one tick: the coalescer sends them as one pipeline
        for row in rows:
            user = keys.user(row.user_id)
            args = service.hydrate_args(row, now, grants[row.user_id])
            calls.append(service.coalescer.run(service.scripts.hydrate, [user], args))
            calls.append(
                service.coalescer.run(
                    service.scripts.reset,
                    [
                        user,
                        keys.request(row.user_id, "sys:renew"),
                        keys.user_stream(row.user_id),
                        keys.holds(row.user_id),
                    ],
                    [*service.header(row.user_id), "0", "", "", 0, "", ""],
                )
            )
        results = await asyncio.gather(*calls)
        renewed += sum(1 for r in results[1::2] if r[0] == "ok")
        after = rows[-1].user_id
    if renewed:
        log.info("renewed %d idle users for the period beginning %s", renewed, began.isoformat())
    return renewed
