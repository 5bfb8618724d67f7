"""Renew idle users' periods and expire their due credit blocks, so PostgreSQL shows the new
allocation and the expired credits even for users who make no request (active users do both in
their first Lua call after the moment). Safe to run anywhere and at any time: each renewal is
keyed by period in Redis and an expired block is removed by the call that expires it, so repeats
change nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg

from gateway.credits.clock import period_start
from gateway.credits.service import CreditService
from persistence.users import UserRow, open_grants, users_to_renew, users_with_due_blocks

log = logging.getLogger("metering.renewal")

Pager = Callable[[asyncpg.Pool, datetime, str, int], Awaitable[list[UserRow]]]


async def renew_idle(service: CreditService, batch: int = 250) -> int:
    """Renew every user whose period ended, then expire the due blocks of every user holding
    one in PostgreSQL. Returns how many users were renewed."""
    now = await service.now()  # the scripts' clock: the same boundary for every instance
    began = period_start(now, service.period)
    renewed, _ = await _touch_all(service, now, users_to_renew, began, batch)
    if renewed:
        log.info("renewed %d idle users for the period beginning %s", renewed, began.isoformat())
    _, expired = await _touch_all(service, now, users_with_due_blocks, now, batch)
    if expired:
        log.info("expired the due credit blocks of %d idle users", expired)
    return renewed


async def _touch_all(
    service: CreditService, now: datetime, pages: Pager, since: datetime, batch: int
) -> tuple[int, int]:
    """Run reset.lua (unforced: renew if due, expire what is due) for every user the pager
    finds, a page at a time; returns (users renewed, users whose blocks expired)."""
    after, renewed, expired = "", 0, 0
    while rows := await pages(service.pool, since, after, batch):
        results = await _touch(service, now, rows)
        renewed += sum(1 for r in results if r[0] == "ok")
        expired += sum(1 for r in results if len(r) > 4 and int(r[4]) > 0)
        after = rows[-1].user_id
    return renewed, expired


async def _touch(service: CreditService, now: datetime, rows: list[UserRow]) -> list[Any]:
    """One Redis round trip for a page (two calls a user, within the coalescer's 512 a
    pipeline, so a user's hydrate and reset go together, in order)."""
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
                    keys.request(row.user_id, "sys:renew"),  # unused: not forced
                    keys.user_stream(row.user_id),
                    keys.holds(row.user_id),
                ],
                [*service.header(row.user_id), "0", "", "", 0, "", ""],
            )
        )
    return list(await asyncio.gather(*calls))[1::2]
