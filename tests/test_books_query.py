"""queries.USERS_BOOKS, which `metering reconcile` streams: the figures line books.lua takes
and the flag that sends a user to Python's PostgreSQL-side checks, for each way PostgreSQL's
side can be wrong on its own (gateway/ops/reconcile.py words them; tests/test_reconcile.py
finds them end to end)."""

from __future__ import annotations

import asyncpg

from persistence import queries
from persistence.users import LINE, ODD, user_books

# user: balance, what its ledger sums to, its open blocks (id, remaining)
USERS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "agrees": ("5", "5", [("a-1", "5")]),
    "two-blocks": ("5", "5", [("a-1", "2"), ("p-1", "3")]),
    "no-blocks": ("5", "5", []),  # a row imported before blocks: not compared
    "ledger-off": ("5", "4", [("a-1", "5")]),
    "blocks-off": ("5", "5", [("a-1", "4")]),
    "negative": ("-1", "-1", []),
}
ODD_ONES = {"ledger-off", "blocks-off", "negative"}


async def test_line_and_flag_of_each_kind_of_user(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            for user, (balance, ledger, blocks) in USERS.items():
                await conn.execute(
                    "INSERT INTO user_credits (user_id, credits_remaining, credits_allocated, "
                    "tier, redis_version) VALUES ($1, $2::numeric, 5, 'pro', 7)",
                    user,
                    balance,
                )
                await conn.execute(
                    "INSERT INTO credit_transactions (id, user_id, transaction_type, amount, "
                    "balance_after, request_id) VALUES (gen_random_uuid(), $1, 'allocation', "
                    "$2::numeric, 0, 'sys:create')",
                    user,
                    ledger,
                )
                for block, remaining in blocks:
                    await conn.execute(
                        "INSERT INTO credit_grants (user_id, id, kind, priority, created_at, "
                        "remaining) VALUES ($1, $2, 'allocation', 10, now(), $3::numeric)",
                        user,
                        block,
                        remaining,
                    )
            rows = {r[0]: r for r in await conn.fetch(queries.USERS_BOOKS, 1, 0)}
            halves = [await conn.fetch(queries.USERS_BOOKS, 2, p) for p in (0, 1)]
        finally:
            await tx.rollback()
    assert set(rows) == set(USERS)
    # reconcile's parts: every user in exactly one, with the same figures
    assert sorted(r[0] for half in halves for r in half) == sorted(USERS)
    assert all(tuple(r) == tuple(rows[r[0]]) for half in halves for r in half)
    assert {u for u, r in rows.items() if r[ODD]} == ODD_ONES
    assert rows["agrees"][LINE] == "5000000|7|a-1:5000000"
    assert rows["no-blocks"][LINE] == "5000000|7|~"
    assert rows["negative"][LINE] == "-1000000|7|~"
    balance, version, blocks = rows["two-blocks"][LINE].split("|")
    assert (balance, version) == ("5000000", "7")
    assert sorted(blocks.split(",")) == ["a-1:2000000", "p-1:3000000"]  # in no set order
    books = user_books(rows["ledger-off"])
    assert (books.balance, books.version, books.ledger) == (5_000_000, 7, 4_000_000)
    assert (books.blocks, books.blocks_sum) == ("a-1:5000000", 5_000_000)
