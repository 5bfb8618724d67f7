"""Renew idle users' periods and expire their due credit blocks, so PostgreSQL shows the new
allocation and the expired credits even for users who make no request (active users do both in
their first Lua call after the moment). Safe to run anywhere and at any time: each renewal is
keyed by period in Redis and an expired block is removed by the call that expires it, so repeats
change nothing.

Cost: PostgreSQL writes each user's row as the script loads it (persistence/renewal_queries.py),
a page of `batch` users a statement, the next page read while Redis works on this one; Python
names each user's keys and groups the page by shard; Redis runs renew_many.lua once per shard
and `per_call` users. At most `in_flight` calls are out at once, so the hot path's calls wait
behind at most that many (a call of 100 users holds Redis about 5 ms: 51 µs a user, measured in
docs/performance.md "Renewal: the measured ceiling"). A call stops where its shard's backlog is
full; the rest of its users wait for the flusher. With a `rate` (METERING_RENEW_RATE) the calls
are spaced so that the run renews at most that many users a second: the share of the machine it
takes from the hot path, traded for its duration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from gateway.credits.clock import period_start
from gateway.credits.ids import new_id
from gateway.credits.service import CreditService, backlog_full
from gateway.credits.tiers import roll_flag
from persistence.users import renewal_page

log = logging.getLogger("metering.renewal")

BACKLOG_WAIT = 1.0  # seconds between tries while the shard's backlog is full
BACKLOG_TRIES = 120  # then the run stops (the next one picks up where users are still due)


@dataclass
class Tally:
    renewed: int = 0
    expired: int = 0  # users whose due blocks expired
    loaded: int = 0  # users Redis did not hold, loaded from their rows


class Pace:
    """At most `rate` users a second over a run (0: no limit): a call of n users waits until
    the run's users before it fit the rate."""

    sleep = staticmethod(asyncio.sleep)  # the tests record the waits instead

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.started: float | None = None
        self.taken = 0

    async def take(self, users: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        if self.started is None:
            self.started = now
        wait = self.started + self.taken / self.rate - now
        self.taken += users
        if wait > 0:
            await self.sleep(wait)


async def renew_idle(
    service: CreditService,
    batch: int = 2000,
    per_call: int = 100,
    in_flight: int = 2,
    rate: float = 0.0,
) -> int:
    """Renew every user whose period ended, then expire the due blocks of every user holding
    one in PostgreSQL, at most `rate` users a second (0: no limit). Returns how many users were
    renewed."""
    now = await service.now()  # the scripts' clock: the same boundary for every instance
    began = period_start(now, service.period)
    sweep = _Sweep(service, began, per_call, in_flight, Pace(rate))
    due = await sweep.run(False, began, batch)
    if due.renewed:
        log.info(
            "renewed %d idle users for the period beginning %s (%d loaded from PostgreSQL)",
            due.renewed,
            began.isoformat(),
            due.loaded,
        )
    expiring = await sweep.run(True, now, batch)
    if expiring.expired:
        log.info("expired the due credit blocks of %d idle users", expiring.expired)
    return due.renewed


class _Sweep:
    def __init__(
        self,
        service: CreditService,
        began: datetime,
        per_call: int,
        in_flight: int,
        pace: Pace | None = None,
    ) -> None:
        self.service, self.began, self.per_call = service, began, per_call
        self.pace = pace if pace is not None else Pace(0)
        self.gate = asyncio.Semaphore(in_flight)
        self.rolls = json.dumps({t.name: roll_flag(t) for t in service.tiers.tiers.values()})

    async def run(self, expiring: bool, since: datetime, batch: int) -> Tally:
        """Every page of users the query finds, each read while the one before is renewed."""
        tally = Tally()
        pool = self.service.pool
        page = await renewal_page(pool, expiring, since, "", batch, self.began)
        while page:
            ahead = None
            if len(page) == batch:
                ahead = asyncio.ensure_future(
                    renewal_page(pool, expiring, since, page[-1][0], batch, self.began)
                )
            try:
                await self._renew(page, tally)
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                raise
            page = await ahead if ahead is not None else []
        return tally

    async def _renew(self, page: list[tuple[str, str]], tally: Tally) -> None:
        keys = self.service.keys
        shards: dict[int, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
        for user_id, row in page:
            shard, state, holds = keys.state_and_holds(user_id)
            names, rows = shards[shard]
            names += (state, holds)
            rows.append(row)
        try:
            async with asyncio.TaskGroup() as calls:  # one failing stops the others
                for shard, (names, rows) in shards.items():
                    stream = keys.stream(shard)
                    for at in range(0, len(rows), self.per_call):
                        part = names[2 * at : 2 * (at + self.per_call)]
                        calls.create_task(
                            self._call([stream, *part], rows[at : at + self.per_call], tally)
                        )
        except ExceptionGroup as group:  # the first failure is the run's (a 503 stays a 503)
            raise group.exceptions[0] from None

    async def _call(self, names: list[str], rows: list[str], tally: Tally) -> None:
        """renew_many.lua on these users until it has done them all: a call stops where the
        shard's backlog is full, and the rest wait for the flusher (BACKLOG_TRIES calls in a
        row that do nothing end the run with a 503)."""
        service, stream, idle = self.service, names[0], 0
        async with self.gate:
            await self.pace.take(len(rows))
            while rows:
                args = ["", *service.header("")[1:3], new_id(), self.rolls, *rows]
                res = await service.coalescer.run(service.scripts.renew_many, names, args)
                tally.renewed += int(res[0])
                tally.expired += int(res[1])
                tally.loaded += int(res[2])
                done = int(res[3])
                rows, names = rows[done:], [stream, *names[1 + 2 * done :]]
                if rows:
                    idle = 0 if done else idle + 1
                    if idle >= BACKLOG_TRIES:
                        raise backlog_full()
                    await asyncio.sleep(BACKLOG_WAIT)  # the flusher drains meanwhile
