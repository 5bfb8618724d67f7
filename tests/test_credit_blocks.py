"""Credit blocks through the API (docs/credit-blocks.md): the allocation is spent first and
renews alone, bought credits stay; every debit records the blocks it drew from; PostgreSQL's
credit_grants match Redis after a flush (the books check at the end of every test includes
blocks: reconcile). On one Redis and on a Redis Cluster."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest

from gateway.credits.clock import period_start
from tests.conftest import BACKENDS, Client, FakeClock

pytestmark = pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)


async def post(c: Client, path: str, body: dict[str, object]) -> httpx.Response:
    r = await c.post(path, json=body)
    assert r.status_code == 200, r.text
    return r


async def debit(c: Client, user: str, amount: str, rid: str) -> httpx.Response:
    return await c.post(
        "/api/v1/credits/debit", json={"user_id": user, "amount": amount, "request_id": rid}
    )


async def grant(c: Client, user: str, amount: str, rid: str, kind: str = "purchase") -> None:
    body = {"user_id": user, "amount": amount, "request_id": rid, "kind": kind}
    await post(c, "/api/v1/credits/grant", body)


async def open_blocks(pool: asyncpg.Pool, user: str) -> dict[str, Decimal]:
    rows = await pool.fetch(
        "SELECT kind, sum(remaining) AS left FROM credit_grants "
        "WHERE user_id = $1 AND closed_at IS NULL GROUP BY kind",
        user,
    )
    return {r["kind"]: r["left"] for r in rows}


async def drawn_by_kind(pool: asyncpg.Pool, user: str) -> dict[str, Decimal]:
    rows = await pool.fetch(
        "SELECT g.kind, sum(split_part(d, ':', 2)::numeric / 1000000) AS took "
        "FROM credit_transactions t, string_to_table(t.draws, ',') AS d "
        "JOIN credit_grants g ON g.id = split_part(d, ':', 1) "
        "WHERE t.user_id = $1 AND g.user_id = t.user_id GROUP BY g.kind",
        user,
    )
    return {r["kind"]: r["took"] for r in rows}


async def test_bought_credits_survive_the_renewal(client: Client, pool: asyncpg.Pool) -> None:
    """The issue's case: a trial user (5.00) buys 20.00 and spends 1.00; the renewal gives
    25.00 (was 5.00): the allocation renewed, the purchase kept, the 1.00 taken from the
    allocation."""
    await grant(client, "t", "20", "buy")
    assert (await debit(client, "t", "1", "d1")).json()["credits_remaining"] == "24.000000"
    await client.app.state.services.flusher.flush()
    assert await drawn_by_kind(pool, "t") == {"allocation": Decimal("1")}
    reset = await post(client, "/api/v1/credits/t/reset", {"request_id": "rs"})
    assert reset.json()["credits_remaining"] == "25.000000"
    assert reset.json()["adjustment"] == "1.000000"  # 4.00 left expired, 5.00 renewed
    await client.app.state.services.flusher.flush()
    assert await open_blocks(pool, "t") == {"allocation": 5, "purchase": 20}


async def test_spending_draws_the_allocation_then_bonuses_then_purchases(
    client: Client, pool: asyncpg.Pool
) -> None:
    await grant(client, "o", "20", "buy")
    await grant(client, "o", "3", "gift", kind="bonus")
    r = await debit(client, "o", "6.5", "d1")  # 5 allocation + 1.5 bonus
    assert r.json()["credits_remaining"] == "21.500000"
    await client.app.state.services.flusher.flush()
    assert await drawn_by_kind(pool, "o") == {"allocation": 5, "bonus": Decimal("1.5")}
    assert await open_blocks(pool, "o") == {
        "allocation": 0,
        "bonus": Decimal("1.5"),
        "purchase": 20,
    }
    await debit(client, "o", "2", "d2")  # the bonus's 1.5, then 0.5 of the purchase
    await client.app.state.services.flusher.flush()
    assert await drawn_by_kind(pool, "o") == {
        "allocation": 5,
        "bonus": 3,
        "purchase": Decimal("0.5"),
    }
    assert await open_blocks(pool, "o") == {"allocation": 0, "purchase": Decimal("19.5")}


async def test_200_concurrent_debits_across_three_blocks_charge_exactly_the_right_blocks(
    client: Client, pool: asyncpg.Pool
) -> None:
    """5 allocation + 3 bonus + 20 purchase = 28.00; 200 debits of 0.15 at once: exactly 186
    pass (27.90), drawing the allocation and the bonus whole and 19.90 of the purchase."""
    await grant(client, "c", "20", "buy")
    await grant(client, "c", "3", "gift", kind="bonus")
    answers = await asyncio.gather(*(debit(client, "c", "0.15", f"d{i}") for i in range(200)))
    assert Counter(a.status_code for a in answers) == {200: 186, 402: 14}
    await client.app.state.services.flusher.flush()
    assert await drawn_by_kind(pool, "c") == {
        "allocation": 5,
        "bonus": 3,
        "purchase": Decimal("19.9"),
    }
    assert await open_blocks(pool, "c") == {"allocation": 0, "purchase": Decimal("0.1")}
    per_debit = await pool.fetchval(
        "SELECT count(*) FROM credit_transactions WHERE user_id = 'c' AND draws IS NOT NULL"
    )
    assert per_debit == 186


async def test_a_tier_change_moves_only_the_allocation_block(
    client: Client, pool: asyncpg.Pool
) -> None:
    await grant(client, "g", "20", "buy")
    up = await client.put("/api/v1/credits/g/tier", json={"tier": "starter"})  # 5 -> 20
    assert up.json()["credits_remaining"] == "40.000000", up.text
    await debit(client, "g", "18", "d1")  # from the allocation block: 2 left of it
    down = await client.put("/api/v1/credits/g/tier", json={"tier": "trial"})  # 20 -> 5
    assert down.json()["adjustment"] == "-2.000000"  # never below 0; the purchase untouched
    assert down.json()["credits_remaining"] == "20.000000"
    await client.app.state.services.flusher.flush()
    assert await open_blocks(pool, "g") == {"allocation": 0, "purchase": 20}


async def refund(c: Client, user: str, debit_id: str, rid: str, amount: str | None = None) -> dict:
    body = {"user_id": user, "transaction_id": debit_id, "request_id": rid}
    if amount is not None:
        body["amount"] = amount
    return dict((await post(c, "/api/v1/credits/refund", body)).json())


async def returned_to(pool: asyncpg.Pool, user: str) -> list[str]:
    """Each flushed refund's draws: where its credits went ('block:-micro')."""
    rows = await pool.fetch(
        "SELECT draws FROM credit_transactions WHERE user_id = $1 AND transaction_type = "
        "'refund' ORDER BY redis_version",
        user,
    )
    return [r["draws"] for r in rows]


async def test_a_refund_returns_credits_to_the_blocks_the_debit_drew_last_first(
    client: Client, pool: asyncpg.Pool
) -> None:
    """A debit of 7.00 drew the allocation's 5.00 and 2.00 of the purchase. Refunds undo the
    draw from its end: 1.50 goes back to the purchase, then 1.00 = 0.50 to the purchase and
    0.50 to the allocation; never more than was charged; finance's net draws add up."""
    await grant(client, "f", "20", "buy")
    d = (await debit(client, "f", "7", "d1")).json()["transaction_id"]
    await refund(client, "f", d, "rf1", "1.5")
    second = await refund(client, "f", d, "rf2", "1")
    assert second["credits_remaining"] == "20.500000" and second["expired"] == "0.000000"
    await client.app.state.services.flusher.flush()
    buy = await pool.fetchval(
        "SELECT id FROM credit_grants WHERE user_id = 'f' AND kind = 'purchase'"
    )
    alloc = await pool.fetchval(
        "SELECT id FROM credit_grants WHERE user_id = 'f' AND kind = 'allocation'"
    )
    assert await returned_to(pool, "f") == [f"{buy}:-1500000", f"{buy}:-500000,{alloc}:-500000"]
    assert await open_blocks(pool, "f") == {"allocation": Decimal("0.5"), "purchase": 20}
    assert await drawn_by_kind(pool, "f") == {"allocation": Decimal("4.5"), "purchase": 0}
    over = await client.post(
        "/api/v1/credits/refund",
        json={"user_id": "f", "transaction_id": d, "request_id": "rf3", "amount": "4.6"},
    )
    assert over.status_code == 422 and "4.500000" in over.text  # never more than charged
    rest = await refund(client, "f", d, "rf4")  # all that is left: 4.50
    assert rest["refunded"] == "4.500000" and rest["credits_remaining"] == "25.000000"


async def test_a_refund_reopens_a_spent_block_and_a_bonus_expired_since_expires_again(
    client: Client, pool: asyncpg.Pool, clock: FakeClock
) -> None:
    """A debit that emptied a bonus (expiring in a day) reopens it when refunded before the
    day is out; refunded after its expiry, the bonus's share is returned and expires again at
    once: the refund entry names the bonus, an expiry entry takes the share back, the balance
    grows only by the rest (the answer's 'expired' says how much)."""
    clock.now = period_start(clock.now) + timedelta(days=10)  # no renewal in between
    at = clock.now + timedelta(days=1)
    body = {
        "user_id": "e",
        "amount": "2",
        "request_id": "promo",
        "kind": "bonus",
        "expires_at": at.isoformat(),
        "priority": 0,
    }
    bonus = (await post(client, "/api/v1/credits/grant", body)).json()["transaction_id"]
    d1 = (await debit(client, "e", "3", "d1")).json()["transaction_id"]  # bonus 2 + alloc 1
    await debit(client, "e", "1", "d2")  # alloc 1: 3.00 left, all allocation
    # 1.50 of d1: 1.00 back to the allocation, 0.50 reopens the spent bonus
    assert (await refund(client, "e", d1, "r1", "1.5"))["credits_remaining"] == "4.500000"
    await client.app.state.services.flusher.flush()
    assert await open_blocks(pool, "e") == {"allocation": 4, "bonus": Decimal("0.5")}
    clock.advance(days=1)  # the bonus's 0.50 expires
    d3 = (await debit(client, "e", "0.5", "d3")).json()
    assert d3["credits_remaining"] == "3.500000"
    late = await refund(client, "e", d1, "r2")  # 1.50 left, all of it the bonus's
    assert (late["refunded"], late["expired"]) == ("1.500000", "1.500000")
    assert late["credits_remaining"] == "3.500000"
    replay = await refund(client, "e", d1, "r2")
    assert replay == {**late, "replayed": True}  # the replay answers as the refund did
    await client.app.state.services.flusher.flush()
    rows = await pool.fetch(
        "SELECT transaction_type, amount, draws FROM credit_transactions "
        "WHERE user_id = 'e' AND transaction_type IN ('refund', 'expiry') "
        "ORDER BY redis_version"
    )
    assert [tuple(r) for r in rows] == [
        ("refund", Decimal("1.5"), f"a-create:-1000000,{bonus}:-500000"),
        ("expiry", Decimal("-0.5"), f"{bonus}:500000"),
        ("refund", Decimal("1.5"), f"{bonus}:-1500000"),
        ("expiry", Decimal("-1.5"), f"{bonus}:1500000"),
    ]


async def test_a_rollover_tier_moves_the_unused_allocation_to_a_rollover_block(
    tmp_path: Path, client: Client, pool: asyncpg.Pool, clock: FakeClock
) -> None:
    await client.put("/api/v1/credits/r/tier", json={"tier": "starter"})
    await debit(client, "r", "1", "d1")
    await client.app.state.services.flusher.flush()
    # move the user to a rollover tier by hand: the default tiers have none
    await client.app.state.services.redis.hset(
        client.app.state.services.credits.keys.user("r"), "roll", "1"
    )
    reset = await post(client, "/api/v1/credits/r/reset", {"request_id": "rs"})
    assert reset.json()["credits_remaining"] == "39.000000"  # 19 rolled over + 20 renewed
    await client.app.state.services.flusher.flush()
    assert await open_blocks(pool, "r") == {"allocation": 20, "rollover": 19}
    await debit(client, "r", "21", "d2")  # the allocation first, then the rollover
    await client.app.state.services.flusher.flush()
    assert await open_blocks(pool, "r") == {"allocation": 0, "rollover": 18}


async def test_a_user_cached_before_blocks_gets_them_at_its_next_change(
    client: Client, pool: asyncpg.Pool
) -> None:
    """Redis still holds users loaded by the version before blocks (no 'blks'): the first
    script that changes one gives it blocks from its balance (the allocation left, the rest as
    a purchase), and the flush makes PostgreSQL's rows match (the migration's are closed)."""
    await grant(client, "old", "20", "buy")
    await debit(client, "old", "1", "d1")
    await client.app.state.services.flusher.flush()
    redis = client.app.state.services.redis
    key = client.app.state.services.credits.keys.user("old")
    await redis.hdel(key, "blks")
    await debit(client, "old", "1", "d2")  # blocks from the balance (24): 5 allocation, 19 more
    await client.app.state.services.flusher.flush()
    assert await open_blocks(pool, "old") == {"allocation": 4, "purchase": 19}
    assert ":a-" in await redis.hget(key, "blks")  # made from the balance


async def test_a_user_imported_without_blocks_gets_them_at_its_first_change(
    client: Client, pool: asyncpg.Pool
) -> None:
    """A row written straight into user_credits (an import) has no credit_grants: it is loaded
    as it is, and its first change makes its blocks from its balance; the flush writes them."""
    await pool.execute(
        "INSERT INTO user_credits (user_id, credits_remaining, credits_allocated, tier) "
        "VALUES ('imp', 70, 60, 'professional')"
    )
    await pool.execute(
        "INSERT INTO credit_transactions (id, user_id, transaction_type, amount, balance_after, "
        "request_id) VALUES (gen_random_uuid(), 'imp', 'allocation', 70, 70, 'import')"
    )
    assert (await debit(client, "imp", "1", "d1")).json()["credits_remaining"] == "69.000000"
    await client.app.state.services.flusher.flush()
    assert await open_blocks(pool, "imp") == {"allocation": 59, "purchase": 10}
