"""The HTTP API against real Redis and PostgreSQL: debit, balance, grant, tier, tiers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.credits.clock import period_end, period_start
from gateway.credits.keys import Keys
from gateway.credits.money import fmt
from tests.books import assert_books_balance
from tests.conftest import Client, FakeClock


async def debit(client: Client, user: str, amount: Any, rid: str, **kw: Any) -> Any:
    return await client.post(
        "/api/v1/credits/debit", json={"user_id": user, "amount": amount, "request_id": rid, **kw}
    )


async def flush(client: Client) -> Any:
    return await client.app.state.services.flusher.flush()


async def test_debit_creates_user_charges_and_flushes(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    r = await debit(
        client,
        "alice",
        "1.25",
        "req-1",
        model="gpt-4o",
        input_tokens=100,
        output_tokens=20,
        metadata={"service": "chat"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["charged"] == "1.250000" and body["credits_remaining"] == "3.750000"
    assert body["replayed"] is False and body["user_id"] == "alice"
    await flush(client)
    row = await pool.fetchrow("SELECT * FROM credit_transactions WHERE request_id = 'req-1'")
    assert row["id"].hex == body["transaction_id"].replace("-", "")
    assert row["transaction_type"] == "usage" and row["amount"] == Decimal("-1.25")
    assert row["balance_after"] == Decimal("3.75") and row["model"] == "gpt-4o"
    assert (row["input_tokens"], row["output_tokens"]) == (100, 20)
    assert row["metadata"] == '{"service": "chat"}'
    assert await assert_books_balance(pool, redis, keys) == 1


async def test_amount_as_json_number_is_exact(client: Client) -> None:
    r = await debit(client, "num", 0.1, "n1")
    assert r.status_code == 200 and r.json()["charged"] == "0.100000"
    r = await debit(client, "num", 1, "n2")
    assert r.json()["credits_remaining"] == "3.900000"


async def test_replay_returns_original_and_charges_once(client: Client) -> None:
    first = (await debit(client, "bob", "2", "same")).json()
    again = await debit(client, "bob", "2", "same")
    assert again.status_code == 200
    assert again.json() == {**first, "replayed": True}
    bal = (await client.get("/api/v1/credits/balance", params={"user_id": "bob"})).json()
    assert bal["credits_remaining"] == "3.000000"


async def test_same_request_id_different_body_is_409(
    client: Client, redis: Redis, keys: Keys
) -> None:
    await debit(client, "carol", "1", "r")
    for body in ({"amount": "2"}, {"amount": "1", "model": "other"}):
        r = await debit(client, "carol", body.pop("amount"), "r", **body)
        assert r.status_code == 409, r.text
        assert "different body" in r.json()["detail"]
    assert await redis.xlen(keys.user_stream("carol")) == 1


async def test_request_id_is_per_user(client: Client) -> None:
    assert (await debit(client, "u1", "1", "shared")).json()["replayed"] is False
    assert (await debit(client, "u2", "1", "shared")).json()["replayed"] is False


async def test_insufficient_credits_is_402_and_charges_nothing(
    client: Client, redis: Redis, keys: Keys
) -> None:
    await debit(client, "dave", "4", "a")
    r = await debit(client, "dave", "1.000001", "b")
    assert r.status_code == 402
    assert r.json()["credits_remaining"] == "1.000000"
    assert r.json()["reason"] == "insufficient_credits"
    assert "insufficient credits" in r.json()["detail"]
    assert await redis.xlen(keys.user_stream("dave")) == 1
    # exactly the balance is fine
    assert (await debit(client, "dave", "1", "c")).json()["credits_remaining"] == "0.000000"


async def test_balance_creates_unknown_user_with_default_tier(
    client: Client, pool: asyncpg.Pool, clock: FakeClock
) -> None:
    r = await client.get("/api/v1/credits/balance", params={"user_id": "newbie"})
    assert r.status_code == 200
    assert r.json() == {
        "user_id": "newbie",
        "tier": "trial",
        "credits_remaining": "5.000000",
        "credits_allocated": "5.000000",
        "monthly_cap": None,
        "last_reset": period_start(clock.now).isoformat(),
        "period_spent": "0.000000",
        "credits_held": "0.000000",
        # the allocation ends with the period (the trial tier does not roll it over)
        "expiring": {"amount": "5.000000", "at": period_end(clock.now).isoformat()},
    }
    assert await pool.fetchval("SELECT tier FROM user_credits WHERE user_id='newbie'") == "trial"


async def test_user_in_postgres_is_loaded_not_recreated(client: Client, pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO user_credits (user_id, credits_remaining, credits_allocated, tier) "
        "VALUES ('legacy', 42.5, 60, 'professional')"
    )
    await pool.execute(  # its history, so the books balance
        "INSERT INTO credit_transactions (id, user_id, transaction_type, amount, balance_after, "
        "request_id) VALUES (gen_random_uuid(), 'legacy', 'allocation', 42.5, 42.5, 'import')"
    )
    r = await client.get("/api/v1/credits/balance", params={"user_id": "legacy"})
    assert r.json()["credits_remaining"] == "42.500000" and r.json()["tier"] == "professional"


async def test_grant_adds_credits_idempotently(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    body = {
        "user_id": "erin",
        "amount": "10.5",
        "request_id": "g1",
        "kind": "bonus",
        "reason": "welcome",
    }
    r = await client.post("/api/v1/credits/grant", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["granted"] == "10.500000" and r.json()["credits_remaining"] == "15.500000"
    r2 = await client.post("/api/v1/credits/grant", json=body)
    assert r2.json()["replayed"] is True and r2.json()["credits_remaining"] == "15.500000"
    r3 = await client.post("/api/v1/credits/grant", json={**body, "amount": "11"})
    assert r3.status_code == 409
    await flush(client)
    row = await pool.fetchrow("SELECT * FROM credit_transactions WHERE request_id = 'g1'")
    assert row["transaction_type"] == "bonus" and row["amount"] == Decimal("10.5")
    await assert_books_balance(pool, redis, keys)


async def test_grant_past_numeric_maximum_is_422(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    r = await client.post(
        "/api/v1/credits/grant",
        json={"user_id": "max", "amount": "999994.999999", "request_id": "g1"},
    )
    assert r.json()["credits_remaining"] == "999999.999999"
    r = await client.post(
        "/api/v1/credits/grant", json={"user_id": "max", "amount": "0.000001", "request_id": "g2"}
    )
    assert r.status_code == 422 and "maximum" in r.json()["detail"]
    await flush(client)
    await assert_books_balance(pool, redis, keys)


async def test_tier_change_moves_allocation_and_balance(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    await debit(client, "fay", "1", "d1")
    r = await client.put("/api/v1/credits/fay/tier", json={"tier": "starter"})
    assert r.status_code == 200, r.text
    assert r.json()["credits_remaining"] == "19.000000" and r.json()["adjustment"] == "15.000000"
    again = await client.put("/api/v1/credits/fay/tier", json={"tier": "starter"})
    assert again.json()["transaction_id"] is None and again.json()["adjustment"] == "0.000000"
    down = await client.put("/api/v1/credits/fay/tier", json={"tier": "free"})
    assert down.json()["credits_remaining"] == "0.000000"  # never below zero
    assert down.json()["adjustment"] == "-19.000000"
    bad = await client.put("/api/v1/credits/fay/tier", json={"tier": "gold"})
    assert bad.status_code == 422 and "known tiers" in bad.json()["detail"]
    await flush(client)
    rec = await pool.fetchrow("SELECT * FROM user_credits WHERE user_id='fay'")
    assert rec["tier"] == "free" and rec["credits_allocated"] == 0
    await assert_books_balance(pool, redis, keys)


async def test_tiers_are_listed(client: Client) -> None:
    tiers = {t["name"]: t for t in (await client.get("/api/v1/tiers")).json()["tiers"]}
    assert {n: t["monthly_allocation"] for n, t in tiers.items()} == {
        "free": "0.000000",
        "trial": "5.000000",
        "starter": "20.000000",
        "professional": "60.000000",
        "enterprise": "999999.990000",
    }
    assert tiers["trial"]["default"] is True


def nested(depth: int) -> dict[str, Any]:
    """An object nested `depth` levels deep."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


# what issue 12 found accepted: lenient amounts, names with a trailing newline, C1 controls
# and separators, blank names, metadata of any size or depth
HOSTILE_BODIES = [
    *(
        ({"user_id": "v", "amount": text, "request_id": "x"}, "decimal string")
        for text in ("1_000", "\uff11", " 1", "1 ", "1e3", "+1", "1.", ".5", "0x10", "\u0661")
    ),
    *(
        ({"user_id": user, "amount": "1", "request_id": "x"}, "user_id")
        for user in ("v\n", "v\x85", "v\x9b", "v\u2028", "v\u202e", "\u200bv", "   ", " v", "v ")
    ),
    ({"user_id": "v", "amount": "1", "request_id": "x\n"}, "request_id"),
    ({"user_id": "v", "amount": "1", "request_id": "x", "model": "m\n"}, "model"),
    ({"user_id": "v", "amount": "1", "request_id": "x", "model": "m\x85"}, "model"),
    (
        {"user_id": "v", "amount": "1", "request_id": "x", "metadata": {"a": "x" * 8200}},
        "at most 8192",
    ),
    (
        {"user_id": "v", "amount": "1", "request_id": "x", "metadata": nested(9)},
        "more than 8 levels",
    ),
    (
        {"user_id": "v", "amount": "1", "request_id": "x", "metadata": nested(40)},
        "more than 32 levels",  # the whole body's limit first, as the framework's route says
    ),
    (
        {
            "user_id": "v",
            "amount": "1",
            "request_id": "x",
            "metadata": {f"k{i}": i for i in range(65)},
        },
        "at most 64",
    ),
]
BAD_BODIES = [
    ({"user_id": "v", "amount": "-1", "request_id": "x"}, "greater than 0"),
    ({"user_id": "v", "amount": "0", "request_id": "x"}, "greater than 0"),
    ({"user_id": "v", "amount": 0, "request_id": "x"}, "greater than 0"),
    ({"user_id": "v", "amount": "NaN", "request_id": "x"}, "decimal string"),
    ({"user_id": "v", "amount": "Infinity", "request_id": "x"}, "decimal string"),
    ({"user_id": "v", "amount": "1.0000001", "request_id": "x"}, "6 decimal places"),
    ({"user_id": "v", "amount": "1000000", "request_id": "x"}, "at most 999999.999999"),
    ({"user_id": "v", "amount": "1e400", "request_id": "x"}, "decimal string"),
    ({"user_id": "v", "amount": "abc", "request_id": "x"}, "decimal"),
    ({"user_id": "v", "amount": True, "request_id": "x"}, "decimal"),
    ({"user_id": "v", "amount": [1], "request_id": "x"}, "decimal"),
    ({"user_id": 7, "amount": "1", "request_id": "x"}, "str"),
    ({"user_id": "v", "amount": "1", "request_id": 5}, "str"),
    ({"amount": "1", "request_id": "x"}, "user_id"),
    ({"user_id": "v", "request_id": "x"}, "amount"),
    ({"user_id": "v", "amount": "1"}, "request_id"),
    ({"user_id": "v" * 256, "amount": "1", "request_id": "x"}, "255"),
    ({"user_id": "", "amount": "1", "request_id": "x"}, "user_id"),
    ({"user_id": "v\x00", "amount": "1", "request_id": "x"}, "user_id"),
    ({"user_id": "v", "amount": "1", "request_id": "x" * 129}, "128"),
    ({"user_id": "v", "amount": "1", "request_id": ""}, "request_id"),
    ({"user_id": "v", "amount": "1", "request_id": "caf\u00e9"}, "request_id"),
    ({"user_id": "v", "amount": "1", "request_id": "sys:x"}, "reserved"),
    ({"user_id": "v", "amount": "1", "request_id": "x", "input_tokens": -1}, "input_tokens"),
    ({"user_id": "v", "amount": "1", "request_id": "x", "metadata": [1]}, "metadata"),
    ({"user_id": "v", "amount": "1", "request_id": "x", "amonut": "2"}, "amonut"),
    *HOSTILE_BODIES,
]


@pytest.mark.parametrize(("body", "says"), BAD_BODIES)
async def test_bad_debit_bodies_get_400_and_change_nothing(
    client: Client, redis: Redis, keys: Keys, pool: asyncpg.Pool, body: dict[str, Any], says: str
) -> None:
    r = await client.post("/api/v1/credits/debit", json=body)
    assert r.status_code == 400, r.text
    assert says.lower() in r.text.lower(), r.text
    assert await pool.fetchval("SELECT count(*) FROM user_credits") == 0
    assert [k async for k in redis.scan_iter(match=keys.pattern())] == []


DEEP = b'{"a":' * 1000 + b"1" + b"}" * 1000  # past Python's recursion limit


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/credits/debit", b'{"user_id":"v","amount":"1","request_id":"x","metadata":%s}'),
        ("/api/v1/credits/debit", b'{"user_id":"v","amount":"1","request_id":"x","deep":%s}'),
        ("/api/v1/credits/debit/batch", b'{"debits":[%s]}'),
        ("/api/v1/credits/debit/batch", b'{"debits":[{"user_id":"v","metadata":%s}]}'),
        ("/api/v1/credits/grant", b'{"user_id":"v","amount":"1","request_id":"x","reason":%s}'),
        ("/api/v1/credits/reservations", b'{"user_id":"v","amount":"1","request_id":%s}'),
        ("/api/v1/credits/reservations/rv0_" + "0" * 32 + "/commit", b'{"metadata":%s}'),
        ("/api/v1/admin/keys", b'{"name":"deep","scopes":%s}'),
        ("/api/v1/coupons", b'{"credits":"1","code":%s}'),
    ],
)
async def test_deep_json_is_400_everywhere(
    client: Client, redis: Redis, keys: Keys, pool: asyncpg.Pool, path: str, body: bytes
) -> None:
    """A body nested past Python's recursion limit, on every route that reads one: a clear
    400 (or, in a batch, that item's 400), nothing written."""
    r = await client.post(path, content=body % DEEP, headers={"Content-Type": "application/json"})
    if path.endswith("/batch") and r.status_code == 200:
        item = r.json()["results"][0]
        assert item["status"] == 400 and "levels" in item["error"]["detail"], r.text
    else:
        assert r.status_code == 400, r.text
        assert "nests more than 32 levels" in r.text or "unknown field `deep`" in r.text
    assert [k async for k in redis.scan_iter(match=keys.pattern())] == []
    assert await pool.fetchval("SELECT count(*) FROM user_credits") == 0
    assert await pool.fetchval("SELECT count(*) FROM api_keys WHERE name = 'deep'") == 0


@pytest.mark.parametrize(
    ("number", "says"),
    [(b"1e3", "exponent"), (b"1E-3", "exponent"), (b"0.10000000000000001", "6 decimal places")],
)
async def test_json_numbers_are_read_as_written(
    client: Client, redis: Redis, keys: Keys, number: bytes, says: str
) -> None:
    """Never through a float: 17 significant digits are 17, not the float nearest to them."""
    raw = b'{"user_id": "v", "request_id": "x", "amount": ' + number + b"}"
    for path in ("/api/v1/credits/debit", "/api/v1/credits/reservations"):
        r = await client.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and says in r.text, r.text
    assert [k async for k in redis.scan_iter(match=keys.pattern())] == []


@pytest.mark.parametrize("raw", [b"{", b"not json", b"", b"[]", b"null", b'{"user_id": "v"'])
async def test_malformed_json_is_400(client: Client, redis: Redis, keys: Keys, raw: bytes) -> None:
    r = await client.post(
        "/api/v1/credits/debit", content=raw, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert [k async for k in redis.scan_iter(match=keys.pattern())] == []


async def test_oversized_body_is_refused_saying_the_limit(client: Client) -> None:
    """413 names the limit and its setting, on the fast path and on the framework's routes."""
    says = "larger than the 65,536 bytes a request may have (METERING_MAX_BODY_BYTES)"
    r = await debit(client, "big", "1", "x", metadata={"blob": "a" * 100_000})
    assert r.status_code == 413 and says in r.json()["detail"], r.text
    grant = {"user_id": "big", "amount": "1", "request_id": "g", "reason": "a" * 100_000}
    r = await client.post("/api/v1/credits/grant", json=grant)
    assert r.status_code == 413 and says in r.json()["detail"], r.text


@pytest.mark.parametrize("user", ["a{b}", "a}:r:x", "with space", "üñí©ødé", "x:y", "%7B"])
async def test_awkward_user_ids_stay_apart(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys, user: str
) -> None:
    assert (await debit(client, user, "1", "r")).json()["credits_remaining"] == "4.000000"
    assert (await debit(client, "a", "1", "r")).json()["credits_remaining"] == "4.000000"
    bal = await client.get("/api/v1/credits/balance", params={"user_id": user})
    assert bal.json()["user_id"] == user and bal.json()["credits_remaining"] == "4.000000"
    await flush(client)
    await assert_books_balance(pool, redis, keys)


def test_amount_format() -> None:
    assert fmt(0) == "0.000000" and fmt(-1) == "-0.000001" and fmt(123_456_789) == "123.456789"


BAD_GRANTS = [
    ({"user_id": "v", "amount": "0", "request_id": "x"}, "greater than 0"),
    ({"user_id": "v", "amount": "1.1234567", "request_id": "x"}, "6 decimal places"),
    ({"user_id": "v", "amount": "1", "request_id": "x", "kind": "gift"}, "kind"),
    ({"user_id": "v", "amount": "1"}, "request_id"),
    ({"user_id": "v", "amount": "1", "request_id": "x", "reason": "r" * 1001}, "reason"),
]


@pytest.mark.parametrize(("body", "says"), BAD_GRANTS)
async def test_bad_grant_bodies_get_400_and_change_nothing(
    client: Client, redis: Redis, keys: Keys, body: dict[str, Any], says: str
) -> None:
    r = await client.post("/api/v1/credits/grant", json=body)
    assert r.status_code == 400, r.text
    assert says in r.text
    assert [k async for k in redis.scan_iter(match=keys.pattern())] == []


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "/api/v1/credits/balance", None),
        ("GET", "/api/v1/credits/balance?user_id=", None),
        ("GET", "/api/v1/credits/balance?user_id=" + "u" * 256, None),
        ("PUT", "/api/v1/credits/" + "u" * 256 + "/tier", {"tier": "free"}),
        ("PUT", "/api/v1/credits/u/tier", {"tier": ""}),
        ("PUT", "/api/v1/credits/u/tier", {}),
    ],
)
async def test_bad_query_and_path_values_are_400(
    client: Client, redis: Redis, keys: Keys, method: str, url: str, body: Any
) -> None:
    r = await client.request(method, url, json=body)
    assert r.status_code == 400, r.text
    assert [k async for k in redis.scan_iter(match=keys.pattern())] == []


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        (
            "POST",
            "/api/v1/credits/debit",
            {"user_id": "n", "amount": "1", "request_id": "x", "model": "gpt\x00"},
        ),
        (
            "POST",
            "/api/v1/credits/debit",
            {"user_id": "n", "amount": "1", "request_id": "x", "metadata": {"k": "v\x00"}},
        ),
        (
            "POST",
            "/api/v1/credits/grant",
            {"user_id": "n", "amount": "1", "request_id": "x", "reason": "a\x00b"},
        ),
        ("GET", "/api/v1/audit?action=%00", None),
        ("GET", "/api/v1/audit?user_id=a%00", None),
        ("GET", "/api/v1/coupons/%00", None),
        ("PUT", "/api/v1/pricing/m%00", {"input_per_million": "1", "output_per_million": "1"}),
        ("DELETE", "/api/v1/admin/keys/%00", None),
    ],
)
async def test_nul_characters_never_reach_postgresql(
    client: Client, redis: Redis, keys: Keys, method: str, url: str, body: Any
) -> None:
    """PostgreSQL refuses NUL: such text is a 400 at the door, never a row that would stop the
    flusher or an error that looks like an outage."""
    r = await client.request(method, url, json=body)
    assert r.status_code == 400, r.text
    assert [k async for k in redis.scan_iter(match=keys.pattern())] == []
