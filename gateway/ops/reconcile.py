"""Compare every user's Redis state with its PostgreSQL row and ledger (after a flush).

Drift is any of: a balance or version that differs between Redis and PostgreSQL once nothing
is left to flush, a ledger that does not sum to the balance, credit blocks that do not sum to it
or differ between the two, a negative balance, or a user present on one side only; with
``--deep``, also a ledger total (ledger_totals) or an hour or day usage summary
(usage_summaries) that differs from the ledger's rows.
`metering reconcile` prints each drift and exits 1 when there is any.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from gateway.credits.block_text import parse_blocks
from gateway.credits.keys import Keys, shard_of
from gateway.credits.money import fmt
from persistence.history import usage_summary_drift
from persistence.ledger import ledger_totals_drift
from persistence.users import (
    LINE,
    ODD,
    BooksRow,
    UserBooks,
    all_user_books,
    unknown_users,
    user_books,
)

PAGE = 2000
# users read side by side, each part on a connection of its own (one is left for the rest):
# PostgreSQL's aggregate of the blocks is most of reconcile's time, and one backend is one core
PARTS = 2
SCAN_COUNT = 10_000  # keys Redis walks a SCAN call (a tenth of the round trips of 1,000)
# Redis's side of a page of users, one call a shard (gateway/ops/lua/books.lua), and the count
# of the user hashes Redis holds, by shard (count_users.lua)
BOOKS = resources.files("gateway.ops").joinpath("lua", "books.lua").read_text()
COUNT_USERS = resources.files("gateway.ops").joinpath("lua", "count_users.lua").read_text()
SHOWN = 20  # summaries that differ from the ledger's rows, at most, of each kind (deep)


@dataclass(slots=True)
class Report:
    users: int = 0
    held: Counter[int] = field(default_factory=Counter)  # users PostgreSQL has, found in Redis
    backlog: int = 0  # events still in Redis (a non-zero backlog makes version gaps expected)
    drift: list[dict[str, object]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.drift


async def reconcile(redis: Redis, pool: asyncpg.Pool, keys: Keys, deep: bool = False) -> Report:
    """Streams: PostgreSQL's side comes from PARTS statements side by side, each through a
    cursor, PAGE users at a time, and Redis's side of a page in one books.lua call a shard,
    which compares there and answers only the users that may differ, so memory holds a page a
    part whatever the number of users. PostgreSQL checks its own side (the row's ODD) and
    writes each user's figures as the line books.lua takes, so Python's work per agreeing user
    is its shard and its key. The ledger's sums are the totals kept with its rows; `deep` also
    checks those totals and the usage summaries against the rows themselves (a pass over the
    whole ledger: `reconcile --deep`)."""
    report = Report()
    async with redis.pipeline(transaction=False) as pipe:
        for stream in keys.all_streams():
            pipe.xlen(stream)
        report.backlog = sum(int(n) for n in await pipe.execute())
    books = redis.register_script(BOOKS)
    settled = "1" if report.backlog == 0 else "0"
    parts = max(1, min(PARTS, pool.get_max_size() - 1))  # one left for the key lookups
    counting = asyncio.ensure_future(_count_users(redis, keys))
    tasks: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(_compare_part(report, pool, keys, books, settled, p, parts))
        for p in range(parts)
    ]
    tasks.append(counting)
    try:
        await asyncio.gather(*tasks)
    finally:  # one failed (PostgreSQL or Redis gone): the others stop too, before its error
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # a shard where Redis holds another number of users than the comparison found there may
    # hold users PostgreSQL lacks: only its keys are read back and looked up
    in_redis = counting.result()
    for shard in sorted(set(in_redis) | set(report.held)):
        if in_redis[shard] != report.held[shard]:
            await _redis_only(redis, pool, keys, report, shard)
    if deep:
        for problem, found in [
            ("ledger total differs from the ledger", await ledger_totals_drift(pool, SHOWN)),
            ("usage summary differs from the ledger", await usage_summary_drift(pool, SHOWN)),
        ]:
            for figures in found:
                user = figures.pop("user_id")
                fields = {k: str(v) for k, v in figures.items()}
                report.drift.append({"user_id": user, "problem": problem, **fields})
    return report


async def _compare_part(
    report: Report,
    pool: asyncpg.Pool,
    keys: Keys,
    books: AsyncScript,
    settled: str,
    part: int,
    parts: int,
) -> None:
    """Part `part` of `parts` of the users, page by page: Redis compares a page while
    PostgreSQL sends the next."""
    comparing: asyncio.Future[None] | None = None
    try:
        async for rows in all_user_books(pool, PAGE, part, parts):
            by_shard: dict[int, list[BooksRow]] = defaultdict(list)
            for row in rows:
                if row[ODD]:
                    _check_postgres(report, user_books(row))
                by_shard[shard_of(row[0], keys.shards)].append(row)
            report.users += len(rows)
            calls = [
                books(
                    keys=keys.users_in(shard, [r[0] for r in group]),
                    args=[settled, "\n".join([r[LINE] for r in group])],
                )
                for shard, group in by_shard.items()
            ]
            if comparing is not None:
                await comparing
            comparing = asyncio.ensure_future(_compare(report, list(by_shard.items()), calls))
        if comparing is not None:
            await comparing
    finally:
        if comparing is not None and not comparing.done():
            comparing.cancel()


async def _count_users(redis: Redis, keys: Keys) -> Counter[int]:
    """The user state hashes Redis holds, by shard, counted inside Redis (count_users.lua, a
    SCAN step a call, on every primary of a Cluster): the keys never come to Python."""
    nodes: list[Any] = [None]
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # a client not used yet knows no nodes
        nodes = list(redis.get_primaries())
    counts: Counter[int] = Counter()
    for node in nodes:
        cursor = "0"
        while True:
            args = ("EVAL", COUNT_USERS, 0, cursor, keys.prefix, SCAN_COUNT)
            if node is None:
                step = await redis.execute_command(*args)  # type: ignore[no-untyped-call]
            else:
                step = await redis.execute_command(*args, target_nodes=node)  # type: ignore[no-untyped-call]
                if isinstance(step, dict):
                    (step,) = step.values()
            for at in range(1, len(step), 2):
                counts[int(step[at])] += int(step[at + 1])
            cursor = str(step[0])
            if cursor == "0":
                break
    return counts


async def _redis_only(
    redis: Redis, pool: asyncpg.Pool, keys: Keys, report: Report, shard: int
) -> None:
    """Users of a shard Redis holds that PostgreSQL has no row for, looked up a page of keys at
    a time (PostgreSQL answers only the ids it lacks): only for a shard where Redis holds more
    or fewer users than the comparison found there (users hydrated or dropped meanwhile also
    bring a shard here, which this then reads exactly)."""
    page: dict[str, str] = {}

    async def look() -> None:
        for user in await unknown_users(pool, list(page)):
            report.drift.append({"key": page[user], "problem": "in Redis but not in PostgreSQL"})
        page.clear()

    match = f"{keys.prefix}:{{s{shard}}}:u:*"
    async for key in redis.scan_iter(match=match, count=SCAN_COUNT, _type="HASH"):
        user = keys.user_id_of(key)
        if user is not None:
            page[user] = key
        if len(page) >= PAGE:
            await look()
    if page:
        await look()


async def _compare(
    report: Report,
    groups: list[tuple[int, list[BooksRow]]],
    calls: Sequence[Awaitable[list[Any]]],
) -> None:
    """A page's books.lua calls, one a shard, all at once (a Cluster pipeline refuses scripts);
    each answers how many of the users Redis holds, then only the users whose figures may
    differ, which are then checked here."""
    answers = await asyncio.gather(*calls)
    for (shard, group), found in zip(groups, answers, strict=True):
        report.held[shard] += int(found[0])
        for at in range(1, len(found), 4):
            row = user_books(group[int(found[at]) - 1])
            bal, ver, blks = (v or None for v in found[at + 1 : at + 4])
            _check(report, row, bal, ver)
            _check_blocks(report, row, bal, blks)


def _check_postgres(report: Report, row: UserBooks) -> None:
    """PostgreSQL's side alone, for a user USERS_BOOKS marks odd: the ledger sums to the
    balance, which is not negative, and the open blocks (if any: a row imported into
    user_credits gets them at its first change) sum to it."""
    if row.ledger != row.balance:
        report.drift.append(
            {
                "user_id": row.user_id,
                "problem": "ledger does not sum to the PostgreSQL balance",
                "ledger": fmt(row.ledger),
                "postgres": fmt(row.balance),
            }
        )
    if row.balance < 0:
        report.drift.append(
            {"user_id": row.user_id, "problem": "negative balance", "postgres": fmt(row.balance)}
        )
    if row.blocks is not None and row.blocks_sum != row.balance:
        report.drift.append(
            {
                "user_id": row.user_id,
                "problem": "credit blocks in PostgreSQL do not sum to the balance",
                "blocks": row.blocks,
                "postgres": fmt(row.balance),
            }
        )


def _check(report: Report, row: UserBooks, bal: str | None, ver: str | None) -> None:
    """Redis's balance and version against PostgreSQL's, for a user books.lua found suspect."""
    if bal is None:
        return  # not cached in Redis: PostgreSQL alone is the state, nothing to compare
    if int(bal) < 0:
        report.drift.append(
            {"user_id": row.user_id, "problem": "negative balance in Redis", "redis": bal}
        )
    if report.backlog == 0 and (int(bal) != row.balance or int(ver or 0) != row.version):
        report.drift.append(
            {
                "user_id": row.user_id,
                "problem": "Redis and PostgreSQL differ",
                "redis_micro": bal,
                "redis_version": ver,
                "postgres": fmt(row.balance),
                "postgres_version": row.version,
            }
        )


def _check_blocks(report: Report, row: UserBooks, bal: str | None, blks: str | None) -> None:
    """Credit blocks (docs/credit-blocks.md) in Redis, for a user books.lua found suspect: they
    sum to the balance, and once nothing is left to flush they are PostgreSQL's blocks with the
    same remainders. A user loaded before blocks (no 'blks') or whose row has none is not
    compared until its first change gives it blocks."""
    if blks is None:
        return  # not in Redis, or loaded before blocks and untouched since: nothing to compare
    held = {b.id: str(b.remaining) for b in parse_blocks(blks)}
    if sum(int(v) for v in held.values()) != int(bal or "0"):
        report.drift.append(
            {"user_id": row.user_id, "problem": "credit blocks in Redis do not sum to the balance"}
        )
    listed = dict(part.rsplit(":", 1) for part in (row.blocks or "").split(",") if part)
    if report.backlog == 0 and row.blocks is not None and held != listed:
        report.drift.append(
            {
                "user_id": row.user_id,
                "problem": "credit blocks differ between Redis and PostgreSQL",
                "redis": ",".join(f"{k}:{v}" for k, v in sorted(held.items())),
                "postgres": ",".join(f"{k}:{v}" for k, v in sorted(listed.items())),
            }
        )
