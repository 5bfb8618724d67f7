"""user_credits rows: create (or fetch) and read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg

from persistence import queries
from persistence.db import Executor


class UserCreditsError(ValueError):
    """A row could not be written; the message says which constraint and why."""


@dataclass(frozen=True, slots=True)
class UserRow:
    user_id: str
    credits_remaining: Decimal
    credits_allocated: Decimal
    tier: str
    monthly_cap: Decimal | None
    last_reset: datetime | None
    created_at: datetime | None
    updated_at: datetime | None
    redis_version: int
    period_spent: Decimal


def _row(rec: asyncpg.Record) -> UserRow:
    return UserRow(**{k: rec[k] for k in UserRow.__slots__})


async def create_user_credits(
    conn: Executor,
    user_id: str,
    *,
    tier: str,
    allocation: Decimal,
    monthly_cap: Decimal | None,
    last_reset: datetime,
    now: datetime | None = None,
) -> tuple[UserRow, bool]:
    """Create the user's row with the tier's allocation (and its ledger entry), or return the
    existing row unchanged. Returns (row, created)."""
    for _ in range(3):
        try:
            rec = await conn.fetchrow(
                queries.USER_CREATE,
                user_id,
                allocation,
                tier,
                monthly_cap,
                last_reset,
                now or datetime.now(UTC),
            )
        except asyncpg.StringDataRightTruncationError:
            raise UserCreditsError(
                f"user_id is {len(user_id)} characters; user_credits.user_id holds at most 255"
            ) from None
        except asyncpg.NumericValueOutOfRangeError:
            raise UserCreditsError(
                f"allocation {allocation} or monthly_cap {monthly_cap} does not fit numeric(12,6)"
            ) from None
        if rec is not None:
            return _row(rec), bool(rec["created"])
        # A concurrent insert committed after this statement's snapshot: read it again.
    raise UserCreditsError(f"user {user_id!r} could not be created or read")


@dataclass(frozen=True, slots=True)
class GrantRow:
    """An open credit block (docs/credit-blocks.md)."""

    user_id: str
    id: str
    kind: str
    priority: int
    expires_at: datetime | None
    created_at: datetime
    remaining: Decimal
    amount: Decimal | None  # all that was put in the block (None: rows from before it was kept)


async def open_grants(conn: Executor, user_ids: list[str]) -> dict[str, list[GrantRow]]:
    """The users' open credit blocks, by user."""
    out: dict[str, list[GrantRow]] = {u: [] for u in user_ids}
    for rec in await conn.fetch(queries.GRANTS_OPEN, user_ids):
        out[rec["user_id"]].append(GrantRow(**{k: rec[k] for k in GrantRow.__slots__}))
    return out


@dataclass(frozen=True, slots=True)
class ClosedGrant(GrantRow):
    """A spent or expired credit block (closed_at None: closed in Redis, not flushed yet)."""

    closed_at: datetime | None


async def closed_grants(
    conn: Executor, user_id: str, open_ids: list[str], limit: int
) -> list[ClosedGrant]:
    """The user's newest closed blocks: closed in PostgreSQL, or not among open_ids."""
    rows = await conn.fetch(queries.GRANTS_CLOSED, user_id, open_ids, limit)
    return [ClosedGrant(**dict(r)) for r in rows]


async def get_user(conn: Executor, user_id: str) -> UserRow | None:
    rec = await conn.fetchrow(queries.USER_GET, user_id)
    return None if rec is None else _row(rec)


async def users_to_renew(
    conn: Executor, period_began: datetime, after_user: str, limit: int
) -> list[UserRow]:
    """Users whose last renewal is older than the current period, in user_id order."""
    rows = await conn.fetch(queries.USERS_TO_RENEW, period_began, after_user, limit)
    return [_row(r) for r in rows]


async def users_with_due_blocks(
    conn: Executor, now: datetime, after_user: str, limit: int
) -> list[UserRow]:
    """Users with an open block whose expiry is at or before now, in user_id order."""
    rows = await conn.fetch(queries.USERS_WITH_DUE_BLOCKS, now, after_user, limit)
    return [_row(r) for r in rows]


@dataclass(frozen=True, slots=True)
class UserBooks:
    user_id: str
    credits_remaining: Decimal
    redis_version: int
    ledger: Decimal  # sum of the user's ledger entries
    blocks: str | None  # the open credit blocks, 'id:micro' by id, joined by ','


async def users_with_ledger(conn: Executor, after_user: str, limit: int) -> list[UserBooks]:
    rows = await conn.fetch(queries.USERS_WITH_LEDGER, after_user, limit)
    return [UserBooks(**dict(r)) for r in rows]


@dataclass(frozen=True, slots=True)
class Spender:
    user_id: str
    tier: str
    period_spent: Decimal
    credits_remaining: Decimal


async def top_spenders(conn: Executor, limit: int) -> list[Spender]:
    return [Spender(**dict(r)) for r in await conn.fetch(queries.TOP_SPENDERS, limit)]
