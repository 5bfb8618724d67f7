"""Credit blocks with an expiry and a priority (docs/credit-blocks.md): a block expires exactly
once, at its expires_at on the one clock for money, as an 'expiry' ledger entry naming the
blocks and what each lost; lazily in the next call that touches the user and by the renewal
cron for idle users; across concurrent debits and two gateway processes. On one Redis and on a
Redis Cluster; every test ends with the books check (blocks included)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from gateway.credits.clock import period_end, period_start
from gateway.credits.keys import Keys
from gateway.credits.renewal import renew_idle
from tests.books import assert_books_balance
from tests.conftest import ADMIN_KEY, BACKENDS, Client, FakeClock
from tests.processes import flushed, gateway_process, sibling


async def grant(c: Client, user: str, amount: str, rid: str, **block: object) -> httpx.Response:
    body = {"user_id": user, "amount": amount, "request_id": rid, "kind": "bonus", **block}
    return await c.post("/api/v1/credits/grant", json=body)


async def debit(c: Client, user: str, amount: str, rid: str) -> httpx.Response:
    body = {"user_id": user, "amount": amount, "request_id": rid}
    return await c.post("/api/v1/credits/debit", json=body)


async def balance(c: Client, user: str) -> dict[str, object]:
    r = await c.get("/api/v1/credits/balance", params={"user_id": user})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def expiries(pool: asyncpg.Pool, user: str) -> list[tuple[Decimal, str]]:
    rows = await pool.fetch(
        "SELECT amount, draws FROM credit_transactions "
        "WHERE user_id = $1 AND transaction_type = 'expiry' ORDER BY created_at",
        user,
    )
    return [(r["amount"], r["draws"]) for r in rows]


@pytest.fixture
def midperiod(clock: FakeClock) -> FakeClock:
    """The clock moved to the 11th of its month, so no renewal falls inside the test (the test
    at the period's boundary below crosses one on purpose)."""
    clock.now = period_start(clock.now) + timedelta(days=10)
    return clock


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)
async def test_a_bonus_expires_on_time_once_and_the_ledger_says_so(
    client: Client, midperiod: FakeClock, pool: asyncpg.Pool
) -> None:
    """5.00 allocation + a 3.00 bonus expiring in an hour: 1.00 spent from the allocation; at
    the hour the bonus's 3.00 leaves as one expiry entry ('id:3000000'); the purchase-like
    order is kept; its PostgreSQL row closes; a second look expires nothing more."""
    at = midperiod.now + timedelta(hours=1)
    g = await grant(client, "x", "3", "promo", expires_at=rfc3339(at))
    assert g.status_code == 200, g.text
    bonus = g.json()["transaction_id"]
    assert (await debit(client, "x", "1", "d1")).json()["credits_remaining"] == "7.000000"
    shown = await balance(client, "x")
    assert shown["expiring"] == {"amount": "3.000000", "at": at.isoformat()}
    midperiod.advance(minutes=59, seconds=59)
    assert (await balance(client, "x"))["credits_remaining"] == "7.000000"  # not yet
    midperiod.advance(seconds=1)  # the instant itself: expires_at <= now
    assert (await balance(client, "x"))["credits_remaining"] == "4.000000"
    assert (await debit(client, "x", "1", "d2")).json()["credits_remaining"] == "3.000000"
    await client.app.state.services.flusher.flush()
    assert await expiries(pool, "x") == [(Decimal("-3"), f"{bonus}:3000000")]
    row = await pool.fetchrow(
        "SELECT remaining, amount, closed_at IS NOT NULL AS closed, expires_at "
        "FROM credit_grants WHERE user_id = 'x' AND id = $1",
        bonus,
    )
    assert tuple(row) == (0, 3, True, at)
    await balance(client, "x")
    await client.app.state.services.flusher.flush()
    assert len(await expiries(pool, "x")) == 1


@pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)
async def test_a_partly_spent_bonus_expires_only_its_remainder_and_priority_orders_spending(
    client: Client, midperiod: FakeClock, pool: asyncpg.Pool
) -> None:
    """A bonus with priority 5 is spent before the allocation (10); 2.00 of its 3.00 spent,
    1.00 expires. A purchase with priority 0 and no expiry would come first of all."""
    at = midperiod.now + timedelta(days=2)
    g = await grant(client, "p", "3", "promo", expires_at=rfc3339(at), priority=5)
    assert g.status_code == 200, g.text
    await debit(client, "p", "2", "d1")  # from the bonus, not the allocation
    midperiod.advance(days=3)
    shown = await balance(client, "p")
    assert shown["credits_remaining"] == "5.000000"  # the allocation untouched, 1.00 expired
    await client.app.state.services.flusher.flush()
    assert await expiries(pool, "p") == [(Decimal("-1"), f"{g.json()['transaction_id']}:1000000")]


@pytest.mark.parametrize(
    ("block", "status", "says"),
    [
        ({"expires_at": "2001-01-01T00:00:00Z"}, 422, "expires_at must be in the future"),
        ({"expires_at": "2030-01-01T00:00:00"}, 400, "time zone"),
        ({"expires_at": "soon"}, 400, "expires_at"),
        ({"priority": 101}, 400, "priority"),
        ({"priority": -1}, 400, "priority"),
    ],
)
async def test_a_bad_expiry_or_priority_is_refused_and_changes_nothing(
    client: Client, pool: asyncpg.Pool, block: dict[str, object], status: int, says: str
) -> None:
    r = await grant(client, "bad", "3", "g1", **block)
    assert r.status_code == status, r.text
    assert says in r.text
    assert (await balance(client, "bad"))["credits_remaining"] == "5.000000"
    await client.app.state.services.flusher.flush()
    assert await pool.fetchval("SELECT count(*) FROM credit_grants WHERE user_id = 'bad'") == 1


async def test_a_retry_with_another_expiry_is_a_conflict(client: Client, clock: FakeClock) -> None:
    at = clock.now + timedelta(days=1)
    assert (await grant(client, "r", "3", "g", expires_at=rfc3339(at))).status_code == 200
    again = await grant(client, "r", "3", "g", expires_at=rfc3339(at))
    assert again.status_code == 200 and again.json()["replayed"] is True
    other = await grant(client, "r", "3", "g", expires_at=rfc3339(at + timedelta(days=1)))
    assert other.status_code == 409


@pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)
async def test_concurrent_debits_across_the_instant_expire_the_bonus_once(
    client: Client, midperiod: FakeClock, pool: asyncpg.Pool
) -> None:
    """200 debits of 0.01 in flight while the clock crosses a 3.00 bonus's expiry (priority 0:
    spent first): one expiry entry; what the bonus gave plus what expired is exactly 3.00; the
    books balance (checked after the test, blocks included)."""
    at = midperiod.now + timedelta(minutes=1)
    g = await grant(client, "c", "3", "promo", expires_at=rfc3339(at), priority=0)
    bonus = g.json()["transaction_id"]
    first = [asyncio.create_task(debit(client, "c", "0.01", f"a{i}")) for i in range(100)]
    await asyncio.sleep(0)
    midperiod.advance(minutes=1)
    second = [asyncio.create_task(debit(client, "c", "0.01", f"b{i}")) for i in range(100)]
    answers = await asyncio.gather(*first, *second)
    assert Counter(a.status_code for a in answers) == {200: 200}
    await client.app.state.services.flusher.flush()
    (lost, draws), *more = await expiries(pool, "c")
    assert not more and draws == f"{bonus}:{-lost * 1_000_000:.0f}"
    spent_from_bonus = await pool.fetchval(
        "SELECT coalesce(sum(split_part(d, ':', 2)::numeric), 0) / 1000000 "
        "FROM credit_transactions, string_to_table(draws, ',') AS d "
        "WHERE user_id = 'c' AND transaction_type = 'usage' AND split_part(d, ':', 1) = $1",
        bonus,
    )
    assert spent_from_bonus - lost == 3
    assert (await balance(client, "c"))["credits_remaining"] == f"{8 - 2 + lost:.6f}"


@pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)
async def test_the_renewal_cron_expires_idle_users_blocks_so_postgresql_shows_it(
    client: Client, midperiod: FakeClock, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    """Two idle users with a bonus past its expiry: one still in Redis, one Redis forgot (it is
    hydrated from PostgreSQL with its blocks, then expired). The cron expires both without any
    request; running it again changes nothing."""
    at = midperiod.now + timedelta(hours=1)
    for user in ("idle", "gone"):
        assert (await grant(client, user, "2", f"g-{user}", expires_at=rfc3339(at))).status_code
    await client.app.state.services.flusher.flush()
    await redis.delete(keys.user("gone"))
    midperiod.advance(hours=2)
    service = client.app.state.services.credits
    await renew_idle(service)
    await client.app.state.services.flusher.flush()
    for user in ("idle", "gone"):
        assert [lost for lost, _ in await expiries(pool, user)] == [-2]
        assert (
            await pool.fetchval(
                "SELECT credits_remaining FROM user_credits WHERE user_id = $1", user
            )
            == 5
        )
    await renew_idle(service)
    await client.app.state.services.flusher.flush()
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'expiry'"
        )
        == 2
    )


async def test_a_user_hydrated_from_postgresql_keeps_its_expiry(
    client: Client, midperiod: FakeClock, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    at = midperiod.now + timedelta(hours=1)
    await grant(client, "h", "2", "g", expires_at=rfc3339(at))
    await client.app.state.services.flusher.flush()
    await redis.delete(keys.user("h"))
    shown = await balance(client, "h")  # hydrated
    assert shown["expiring"] == {"amount": "2.000000", "at": at.isoformat()}
    midperiod.advance(hours=1)
    assert (await debit(client, "h", "1", "d")).json()["credits_remaining"] == "4.000000"


def test_two_gateways_across_the_instant_expire_a_bonus_once() -> None:
    """Two `metering serve` processes on one Redis and PostgreSQL, debiting one user from 8
    threads while a bonus (priority 0, spent first) reaches its expires_at on the real clock:
    one expiry entry, the bonus's draws plus its expiry are its 3.00, the books balance."""
    with gateway_process(METERING_FLUSH_INTERVAL="0.2") as first:
        auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with sibling(first, METERING_FLUSH_INTERVAL="0.2") as second:
            at = datetime.now(UTC) + timedelta(seconds=1.5)
            g = httpx.post(
                f"{first.url}/api/v1/credits/grant",
                headers=auth,
                json={
                    "user_id": "two",
                    "amount": "3",
                    "request_id": "promo",
                    "kind": "bonus",
                    "expires_at": rfc3339(at),
                    "priority": 0,
                },
            )
            assert g.status_code == 200, g.text
            bonus = g.json()["transaction_id"]
            urls = itertools.cycle([first.url, second.url])
            stop = time.monotonic() + 3.0
            counter = itertools.count()

            def hammer(url: str) -> Counter[int]:
                seen: Counter[int] = Counter()
                with httpx.Client(headers=auth) as http:
                    while time.monotonic() < stop:
                        r = http.post(
                            f"{url}/api/v1/credits/debit",
                            json={
                                "user_id": "two",
                                "amount": "0.001",
                                "request_id": f"d{next(counter)}",
                            },
                        )
                        seen[r.status_code] += 1
                return seen

            with ThreadPoolExecutor(max_workers=8) as threads:
                codes = sum(threads.map(hammer, [next(urls) for _ in range(8)]), Counter())
        assert set(codes) == {200}, codes

        async def books() -> None:
            async with flushed(first) as (pool, redis, keys):
                (lost, draws), *more = await expiries(pool, "two")
                assert not more
                spent = await pool.fetchval(
                    "SELECT coalesce(sum(split_part(d, ':', 2)::numeric), 0) / 1000000 "
                    "FROM credit_transactions, string_to_table(draws, ',') AS d "
                    "WHERE transaction_type = 'usage' AND split_part(d, ':', 1) = $1",
                    bonus,
                )
                assert 0 < spent < 3 and spent - lost == 3, (spent, lost, draws)
                await assert_books_balance(pool, redis, keys)

        asyncio.run(books())


@pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)
async def test_grants_lists_open_blocks_in_spending_order_and_closed_ones_on_request(
    client: Client, midperiod: FakeClock, pool: asyncpg.Pool
) -> None:
    at = midperiod.now + timedelta(days=1)
    buy = (await grant(client, "l", "20", "buy", kind="purchase")).json()["transaction_id"]
    promo = (await grant(client, "l", "3", "promo", expires_at=rfc3339(at))).json()
    gift = (await grant(client, "l", "1", "gift", priority=40)).json()["transaction_id"]
    await debit(client, "l", "6", "d")  # allocation 5 + 1 of the promo
    listed = await client.get("/api/v1/credits/l/grants")
    assert listed.status_code == 200, listed.text
    blocks = listed.json()["grants"]
    assert [(b["kind"], b["remaining"], b["amount"], b["priority"]) for b in blocks] == [
        ("allocation", "0.000000", "5.000000", 10),
        ("bonus", "2.000000", "3.000000", 20),
        ("purchase", "20.000000", "20.000000", 30),
        ("bonus", "1.000000", "1.000000", 40),
    ]
    assert [b["id"] for b in blocks[1:]] == [promo["transaction_id"], buy, gift]
    assert blocks[1]["expires_at"] == at.isoformat() and blocks[2]["expires_at"] is None
    assert blocks[1]["source_transaction"] == promo["transaction_id"]
    assert blocks[0]["expires_at"] is not None  # the period's end
    assert {b["status"] for b in blocks} == {"open"}
    midperiod.advance(days=1)  # the promo expires
    await client.app.state.services.flusher.flush()
    closed = (await client.get("/api/v1/credits/l/grants?include=closed")).json()["grants"]
    assert [(b["id"], b["status"], b["remaining"]) for b in closed if b["status"] == "closed"] == [
        (promo["transaction_id"], "closed", "0.000000")
    ]
    assert len(closed) == 4
    assert next(b for b in closed if b["status"] == "closed")["closed_at"] is None  # not flushed
    await client.app.state.services.flusher.flush()
    closed = (await client.get("/api/v1/credits/l/grants?include=closed")).json()["grants"]
    closed_at = datetime.fromisoformat(closed[-1]["closed_at"])
    assert at <= closed_at < at + timedelta(seconds=5)  # when it expired, on the one clock
    unknown = await client.get("/api/v1/credits/nobody/grants")
    assert unknown.status_code == 404
    bad = await client.get("/api/v1/credits/l/grants?include=everything")
    assert bad.status_code == 400
    assert await pool.fetchval("SELECT count(*) FROM user_credits WHERE user_id = 'nobody'") == 0


async def test_a_bonus_expiring_at_the_periods_end_expires_in_the_renewals_call(
    client: Client, clock: FakeClock, pool: asyncpg.Pool
) -> None:
    """A bonus expiring exactly when the period ends: the first call after it renews the period
    and expires the bonus, two entries with their own transaction ids, each once."""
    ends = period_end(clock.now)
    g = await grant(client, "edge", "2", "promo", expires_at=rfc3339(ends))
    assert g.status_code == 200, g.text
    await debit(client, "edge", "1", "d1")  # from the allocation (priority 10 before 20)
    clock.now = ends
    answers = await asyncio.gather(*(debit(client, "edge", "0.5", f"x{i}") for i in range(4)))
    left = [Decimal(a.json()["credits_remaining"]) for a in answers]
    assert min(left) == 3  # 5.00 renewed, the bonus gone, 4 x 0.50 spent
    await client.app.state.services.flusher.flush()
    rows = await pool.fetch(
        "SELECT id, transaction_type, amount FROM credit_transactions WHERE user_id = 'edge' "
        "AND transaction_type IN ('monthly_reset', 'expiry')"
    )
    assert sorted((r["transaction_type"], r["amount"]) for r in rows) == [
        ("expiry", Decimal("-2")),
        ("monthly_reset", Decimal("1")),  # 4.00 left of the allocation expired, 5.00 renewed
    ]
    assert len({r["id"] for r in rows}) == 2


async def test_a_user_cached_before_expiries_takes_an_expiring_grant(
    client: Client, midperiod: FakeClock, redis: Redis, keys: Keys
) -> None:
    """Redis may hold users loaded before blocks could expire (no 'nexp') or before blocks (no
    'blks' either): an expiring grant works for both, and expires on time."""
    for user, fields in (("pre-expiry", ["nexp"]), ("pre-blocks", ["nexp", "blks"])):
        await debit(client, user, "1", "d0")
        await redis.hdel(keys.user(user), *fields)
        at = midperiod.now + timedelta(hours=1)
        r = await grant(client, user, "2", f"g-{user}", expires_at=rfc3339(at))
        assert r.status_code == 200, r.text
        assert r.json()["credits_remaining"] == "6.000000"
    midperiod.advance(hours=1)
    for user in ("pre-expiry", "pre-blocks"):
        assert (await balance(client, user))["credits_remaining"] == "4.000000"
