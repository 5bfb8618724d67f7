"""Compare every user's Redis state with its PostgreSQL row and ledger (after a flush).

Drift is any of: a balance or version that differs between Redis and PostgreSQL once nothing
is left to flush, a ledger that does not sum to the balance, credit blocks that do not sum to it
or differ between the two, a negative balance, a user present on one side only, or an hour or day
usage summary (usage_summaries) that differs from the ledger's usage rows.
`metering reconcile` prints each drift and exits 1 when there is any.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg
from redis.asyncio import Redis

from gateway.credits.block_text import parse_blocks
from gateway.credits.keys import Keys
from gateway.credits.money import to_micro
from persistence.history import usage_summary_drift
from persistence.users import users_with_ledger

PAGE = 1000
SUMMARY_DRIFT_SHOWN = 20  # hourly usage summaries that differ from the ledger, at most


@dataclass(slots=True)
class Report:
    users: int = 0
    backlog: int = 0  # events still in Redis (a non-zero backlog makes version gaps expected)
    drift: list[dict[str, object]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.drift


async def reconcile(redis: Redis, pool: asyncpg.Pool, keys: Keys) -> Report:
    report = Report()
    async with redis.pipeline(transaction=False) as pipe:
        for stream in keys.all_streams():
            pipe.xlen(stream)
        report.backlog = sum(int(n) for n in await pipe.execute())
    seen: set[str] = set()
    after = ""
    while rows := await users_with_ledger(pool, after, PAGE):
        async with redis.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.hgetall(keys.user(row.user_id))
            states: list[dict[str, str]] = await pipe.execute()
        for row, state in zip(rows, states, strict=True):
            seen.add(keys.user(row.user_id))
            report.users += 1
            bal, ver = state.get("bal"), state.get("ver")
            _check(
                report, row.user_id, row.credits_remaining, row.redis_version, row.ledger, bal, ver
            )
            _check_blocks(report, row.user_id, row.credits_remaining, row.blocks, state)
        after = rows[-1].user_id
    async for key in redis.scan_iter(match=f"{keys.prefix}:{{s*}}:u:*", count=1000):
        if key not in seen:
            report.drift.append({"key": key, "problem": "in Redis but not in PostgreSQL"})
    for summary in await usage_summary_drift(pool, SUMMARY_DRIFT_SHOWN):
        report.drift.append(
            {
                "user_id": summary.pop("user_id"),
                "problem": "usage summary differs from the ledger",
                **{k: str(v) for k, v in summary.items()},
            }
        )
    return report


def _check(
    report: Report,
    user: str,
    pg_bal: Decimal,
    pg_ver: int,
    ledger: Decimal,
    bal: str | None,
    ver: str | None,
) -> None:
    def drift(problem: str, **data: object) -> None:
        report.drift.append({"user_id": user, "problem": problem, **data})

    if ledger != pg_bal:
        drift(
            "ledger does not sum to the PostgreSQL balance",
            ledger=str(ledger),
            postgres=str(pg_bal),
        )
    if pg_bal < 0:
        drift("negative balance", postgres=str(pg_bal))
    if bal is None:
        return  # not cached in Redis: PostgreSQL alone is the state, nothing to compare
    if int(bal) < 0:
        drift("negative balance in Redis", redis=bal)
    if report.backlog == 0 and (int(bal) != to_micro(pg_bal) or int(ver or 0) != pg_ver):
        drift(
            "Redis and PostgreSQL differ",
            redis_micro=bal,
            redis_version=ver,
            postgres=str(pg_bal),
            postgres_version=pg_ver,
        )


def _check_blocks(
    report: Report, user: str, pg_bal: Decimal, pg_blocks: str | None, state: dict[str, str]
) -> None:
    """Credit blocks (docs/credit-blocks.md): they sum to the balance in PostgreSQL and in Redis,
    and once nothing is left to flush both hold the same blocks with the same remainders. A user
    without any in PostgreSQL (a row imported into user_credits) or in Redis (loaded before
    blocks) is not compared until its first change gives it blocks."""
    listed = dict(part.split(":") for part in (pg_blocks or "").split(",") if part)
    # a row written without blocks (imported into user_credits) gets them at its first change
    if pg_blocks is not None and sum(int(v) for v in listed.values()) != to_micro(pg_bal):
        report.drift.append(
            {
                "user_id": user,
                "problem": "credit blocks in PostgreSQL do not sum to the balance",
                "blocks": pg_blocks,
                "postgres": str(pg_bal),
            }
        )
    if "blks" not in state:
        return  # not in Redis, or loaded before blocks and untouched since: nothing to compare
    held = {b.id: str(b.remaining) for b in parse_blocks(state["blks"])}
    if sum(int(v) for v in held.values()) != int(state.get("bal", "0")):
        report.drift.append(
            {"user_id": user, "problem": "credit blocks in Redis do not sum to the balance"}
        )
    if report.backlog == 0 and pg_blocks is not None and held != listed:
        report.drift.append(
            {
                "user_id": user,
                "problem": "credit blocks differ between Redis and PostgreSQL",
                "redis": ",".join(f"{k}:{v}" for k, v in sorted(held.items())),
                "postgres": pg_blocks,
            }
        )
