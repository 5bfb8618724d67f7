"""user_credits rows: create (or fetch) and read."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
    found = await create_users_credits(
        conn,
        [(user_id, last_reset, now or datetime.now(UTC))],
        tier=tier,
        allocation=allocation,
        monthly_cap=monthly_cap,
    )
    return found[user_id]


NewUser = tuple[str, datetime, datetime]  # user id, its last_reset, its now


async def create_users_credits(
    conn: Executor,
    users: list[NewUser],
    *,
    tier: str,
    allocation: Decimal,
    monthly_cap: Decimal | None,
) -> dict[str, tuple[UserRow, bool]]:
    """create_user_credits for many users in one statement (queries.USERS_CREATE): each user
    that does not exist is created with the tier's allocation and its ledger entry, the others
    are returned unchanged. Returns (row, created) by user id."""
    left = {u: (reset, at) for u, reset, at in users}
    found: dict[str, tuple[UserRow, bool]] = {}
    for _ in range(3):
        ids = sorted(left)
        try:
            recs = await conn.fetch(
                queries.USERS_CREATE,
                ids,
                allocation,
                tier,
                monthly_cap,
                [left[u][0] for u in ids],
                [left[u][1] for u in ids],
            )
        except asyncpg.StringDataRightTruncationError:
            longest = max(ids, key=len)
            raise UserCreditsError(
                f"user_id is {len(longest)} characters; user_credits.user_id holds at most 255"
            ) from None
        except asyncpg.NumericValueOutOfRangeError:
            raise UserCreditsError(
                f"allocation {allocation} or monthly_cap {monthly_cap} does not fit numeric(12,6)"
            ) from None
        for rec in recs:
            found[rec["user_id"]] = (_row(rec), bool(rec["created"]))
            left.pop(rec["user_id"], None)
        if not left:
            return found
        # Concurrent inserts committed after this statement's snapshot: read them again.
    raise UserCreditsError(f"users {sorted(left)[:3]!r} could not be created or read")


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


async def renewal_page(
    conn: Executor, expiring: bool, since: datetime, after_user: str, limit: int, began: datetime
) -> list[tuple[str, str]]:
    """The renewal cron's next page, (user id, its row as renew_many.lua loads it), in user_id
    order after after_user: users whose last renewal is older than since (the current period's
    start, began), or, expiring, users holding an open block expired at since (now)."""
    sql = queries.RENEW_PAGE_EXPIRING if expiring else queries.RENEW_PAGE_DUE
    return [(r[0], r[1]) for r in await conn.fetch(sql, since, after_user, limit, began)]


@dataclass(frozen=True, slots=True)
class UserBooks:
    user_id: str
    balance: int  # micro-credits, as every figure here
    version: int
    ledger: int  # sum of the user's ledger entries
    blocks: str | None  # the open credit blocks, 'id:micro' joined by ',' (in no order)
    blocks_sum: int | None  # what they hold together (None: no block)


# A row of queries.USERS_BOOKS: UserBooks's fields, then LINE (books.lua's figures) and ODD
# (PostgreSQL's side alone is wrong). Kept as asyncpg returns it: reconcile looks at a million
# of them and makes a UserBooks (user_books) only of those that may be wrong.
BooksRow = asyncpg.Record
LINE, ODD = 6, 7


def user_books(row: BooksRow) -> UserBooks:
    return UserBooks(row[0], row[1], row[2], row[3], row[4], row[5])


async def all_user_books(
    pool: asyncpg.Pool, chunk: int, part: int = 0, parts: int = 1
) -> AsyncIterator[list[BooksRow]]:
    """Every user's books (queries.USERS_BOOKS), or those of part `part` of `parts`, in chunks
    of `chunk`, streamed from one statement through a cursor: memory holds a chunk, whatever
    the number of users."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        cursor = await conn.cursor(queries.USERS_BOOKS, parts, part)
        while rows := await cursor.fetch(chunk):  # a chunk a round trip, not a row a step
            yield rows


async def unknown_users(conn: Executor, user_ids: list[str]) -> list[str]:
    """Of user_ids, those without a user_credits row."""
    return [r[0] for r in await conn.fetch(queries.USERS_UNKNOWN, user_ids)]


@dataclass(frozen=True, slots=True)
class Spender:
    user_id: str
    tier: str
    period_spent: Decimal
    credits_remaining: Decimal


async def top_spenders(conn: Executor, limit: int) -> list[Spender]:
    return [Spender(**dict(r)) for r in await conn.fetch(queries.TOP_SPENDERS, limit)]
