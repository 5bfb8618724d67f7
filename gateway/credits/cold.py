"""The cold path, coalesced: users Redis does not hold, loaded from PostgreSQL (created there
with the default tier's allocation when new), then put in Redis.

The first requests of many new users arrive together (a launch, a batch of new ids, a Redis
emptied by a restart). Those that miss in the same event-loop tick are loaded together: one
transaction takes the shards' flush locks (shared, in order), one statement creates or reads
every row (persistence/users.py create_users_credits), one reads their open credit blocks, and
each caller gets the row with hydrate.lua's arguments. A call that missed sends the hydrate and
itself again in one pipeline, in that order (CreditService.call): one round trip after the
load, not two. A lone miss costs what it did before; concurrent misses of one user share one
load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.base.errors import Unavailable, Unprocessable
from gateway.base.metrics import HYDRATIONS
from gateway.credits.clock import from_ms, period_start
from gateway.credits.money import to_decimal
from gateway.credits.ticks import TickBatch
from persistence.db import DB_ERRORS
from persistence.ledger import wait_for_flush
from persistence.users import (
    GrantRow,
    UserCreditsError,
    UserRow,
    create_users_credits,
    open_grants,
)

if TYPE_CHECKING:
    from gateway.credits.service import Args, CreditService

log = logging.getLogger("metering.service")

MAX_LOAD = 500  # users in one statement; more misses in a tick make several loads
USER_ID_MAX = 255  # user_credits.user_id is varchar(255)
POSTGRES_DOWN = "PostgreSQL is unreachable and this user is not cached in Redis; retry later"

Loaded = tuple[UserRow, "Args"]  # the row, and hydrate.lua's arguments for it
Waiting = dict[str, tuple[int, list["asyncio.Future[Loaded]"]]]


class ColdPath:
    def __init__(self, credits: CreditService, max_load: int = MAX_LOAD) -> None:
        self.credits = credits
        self.max_load = max_load
        self._ticks: TickBatch[Waiting] = TickBatch(self._load, dict, max_load)
        self.loads = 0  # statements run (for tests and the benchmark)

    async def load(self, user_id: str, now_ms: int) -> UserRow:
        """Load the user into Redis (creating it in PostgreSQL when new); a newer Redis state
        always wins. now_ms is the time on the scripts' clock (their 'miss' answer), so a new
        user's period and first ledger entry sit on the same timeline as what it does next."""
        row, args = await self.fetch(user_id, now_ms)
        credits = self.credits
        await credits.coalescer.run(credits.scripts.hydrate, [credits.keys.user(user_id)], args)
        return row

    async def fetch(self, user_id: str, now_ms: int) -> Loaded:
        """The user's row from PostgreSQL (created there when new) and the arguments that
        hydrate.lua puts it in Redis with; Redis is not touched."""
        if len(user_id) > USER_ID_MAX:
            raise Unprocessable(
                f"user_id is {len(user_id)} characters; user_credits.user_id holds at most 255"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Loaded] = loop.create_future()
        waiting = self._ticks.pending
        if user_id in waiting:
            waiting[user_id][1].append(future)
        else:
            waiting[user_id] = (now_ms, [future])
        self._ticks.added()
        return await future

    async def _load(self, batch: Waiting) -> None:
        try:
            rows, grants = await self._from_postgres(batch)
        except UserCreditsError as exc:
            if len(batch) > 1:  # one user's fault must not fail the others: one at a time
                await asyncio.gather(*(self._load({u: w}) for u, w in batch.items()))
                return
            _settle(batch, Unprocessable, str(exc))
            return
        except DB_ERRORS as exc:
            log.warning("cannot load users from PostgreSQL: %s", type(exc).__name__)
            _settle(batch, Unavailable, POSTGRES_DOWN)
            return
        except BaseException as exc:  # whatever else: every waiting caller gets it
            for _, futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        HYDRATIONS.inc(len(rows))
        credits = self.credits
        for user, row in rows:
            now_ms, futures = batch[user]
            loaded = (row, credits.hydrate_args(row, from_ms(now_ms), grants.get(user, [])))
            for future in futures:
                if not future.done():
                    future.set_result(loaded)

    async def _from_postgres(
        self, batch: Waiting
    ) -> tuple[list[tuple[str, UserRow]], dict[str, list[GrantRow]]]:
        """Every user's row (created when new) and open credit blocks, in one transaction."""
        credits = self.credits
        tier = credits.tiers.default_tier
        self.loads += 1
        users = []
        for user_id, (now_ms, _) in batch.items():
            now = from_ms(now_ms)
            users.append((user_id, period_start(now, credits.period), now))
        streams = [credits.keys.user_stream(u) for u in batch]
        async with credits.pool.acquire() as conn, conn.transaction():
            # a flush of a user's shard under way commits first: never load a row that a batch
            # already read is about to move (gateway/flusher/flush.py flush_shard)
            await wait_for_flush(conn, streams)
            found = await create_users_credits(
                conn,
                users,
                tier=tier.name,
                allocation=to_decimal(tier.allocation),
                monthly_cap=None if tier.monthly_cap is None else to_decimal(tier.monthly_cap),
            )
            grants = await open_grants(conn, list(found))
        for user_id, (_, created) in found.items():
            if created:
                log.info("created user_credits row", extra={"user_id": user_id, "tier": tier.name})
        return [(u, row) for u, (row, _) in found.items()], grants


def _settle(batch: Waiting, error: Callable[[str], BaseException], message: str) -> None:
    """Every caller waiting in batch gets its own error(message)."""
    for _, futures in batch.values():
        for future in futures:
            if not future.done():
                future.set_exception(error(message))
