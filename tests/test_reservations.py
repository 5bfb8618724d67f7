"""Reservations: hold, commit the actual cost or release; expired holds return exactly once."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.credits.keys import Keys
from tests.books import assert_books_balance
from tests.conftest import BACKENDS, Client, FakeClock

# on one Redis and on a Redis Cluster of 3 masters
pytestmark = pytest.mark.parametrize("redis_backend", BACKENDS, indirect=True)

RES = "/api/v1/credits/reservations"


async def reserve(c: Client, user: str, amount: str, rid: str, **kw: Any) -> Any:
    return await c.post(RES, json={"user_id": user, "amount": amount, "request_id": rid, **kw})


async def commit(c: Client, res_id: str, amount: str, **kw: Any) -> Any:
    return await c.post(f"{RES}/{res_id}/commit", json={"amount": amount, **kw})


async def balance(c: Client, user: str) -> dict[str, str]:
    return dict((await c.get("/api/v1/credits/balance", params={"user_id": user})).json())


async def test_reserve_then_commit_less_returns_the_rest(
    client: Client, clock: FakeClock, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    r = await reserve(client, "a", "2", "call-1")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["held"] == "2.000000" and body["credits_remaining"] == "3.000000"
    # five minutes on the scripts' clock (Redis's time, at the test clock's offset)
    expires = datetime.fromisoformat(body["expires_at"]) - clock.now
    assert timedelta(seconds=300) <= expires < timedelta(seconds=302) and not body["replayed"]
    bal = await balance(client, "a")
    assert bal["credits_held"] == "2.000000" and bal["credits_remaining"] == "3.000000"
    # held credits cannot be spent elsewhere
    short = await client.post(
        "/api/v1/credits/debit", json={"user_id": "a", "amount": "3.5", "request_id": "d"}
    )
    assert short.status_code == 402 and short.json()["credits_remaining"] == "3.000000"
    done = await commit(client, body["reservation_id"], "1.25", model="gpt-4o", output_tokens=900)
    assert done.status_code == 200, done.text
    assert done.json()["charged"] == "1.250000" and done.json()["released"] == "0.750000"
    assert done.json()["credits_remaining"] == "3.750000"
    bal = await balance(client, "a")
    assert bal["credits_held"] == "0.000000" and bal["credits_remaining"] == "3.750000"
    await client.app.state.services.flusher.flush()
    row = await pool.fetchrow("SELECT * FROM credit_transactions WHERE request_id = 'call-1'")
    assert row["transaction_type"] == "usage" and row["amount"] == Decimal("-1.25")
    assert row["model"] == "gpt-4o" and row["output_tokens"] == 900
    await assert_books_balance(pool, redis, keys)


async def test_commit_is_idempotent_and_conflicts_on_another_amount(client: Client) -> None:
    res_id = (await reserve(client, "b", "1", "r")).json()["reservation_id"]
    first = (await commit(client, res_id, "0.5")).json()
    again = await commit(client, res_id, "0.5")
    assert again.status_code == 200 and again.json() == {**first, "replayed": True}
    other = await commit(client, res_id, "0.6")
    assert other.status_code == 409 and "already committed" in other.json()["detail"]
    assert (await client.delete(f"{RES}/{res_id}")).status_code == 409
    assert (await balance(client, "b"))["credits_remaining"] == "4.500000"


async def test_commit_above_the_hold_needs_the_balance(client: Client) -> None:
    res_id = (await reserve(client, "c", "1", "r")).json()["reservation_id"]
    too_much = await commit(client, res_id, "5.5")
    assert too_much.status_code == 402
    assert (await balance(client, "c"))["credits_held"] == "1.000000"  # hold intact
    ok = await commit(client, res_id, "4")
    assert ok.status_code == 200 and ok.json()["credits_remaining"] == "1.000000"


async def test_release_returns_the_hold_and_blocks_commit(client: Client) -> None:
    res_id = (await reserve(client, "d", "4", "r")).json()["reservation_id"]
    rel = await client.delete(f"{RES}/{res_id}")
    assert rel.status_code == 200
    assert rel.json()["status"] == "released" and rel.json()["released"] == "4.000000"
    assert rel.json()["credits_remaining"] == "5.000000"
    again = await client.delete(f"{RES}/{res_id}")
    assert again.json()["replayed"] is True and again.json()["credits_remaining"] == "5.000000"
    late = await commit(client, res_id, "1")
    assert late.status_code == 409 and "released" in late.json()["detail"]


async def test_expired_hold_returns_exactly_once_and_cannot_be_committed(
    client: Client, clock: FakeClock, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    res_id = (await reserve(client, "e", "3", "r", ttl_seconds=10)).json()["reservation_id"]
    await reserve(client, "e", "1", "r2", ttl_seconds=3600)
    assert (await balance(client, "e"))["credits_remaining"] == "1.000000"
    clock.advance(seconds=11)  # past its expiry: the gateway that held it died
    for _ in range(3):  # returned once, however often the user is touched
        bal = await balance(client, "e")
        assert bal["credits_held"] == "1.000000" and bal["credits_remaining"] == "4.000000"
    late = await commit(client, res_id, "1")
    assert late.status_code == 409 and "expired" in late.json()["detail"]
    rel = await client.delete(f"{RES}/{res_id}")
    assert rel.status_code == 200 and rel.json()["status"] == "expired"
    full = await client.post(
        "/api/v1/credits/debit", json={"user_id": "e", "amount": "4", "request_id": "all"}
    )
    assert full.status_code == 200  # the expired hold no longer blocks anything
    await client.app.state.services.flusher.flush()
    await assert_books_balance(pool, redis, keys)


async def test_50_concurrent_commits_and_releases_settle_once(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    res_id = (await reserve(client, "f", "2", "r")).json()["reservation_id"]
    calls = [commit(client, res_id, "1.5") for _ in range(25)]
    calls += [client.delete(f"{RES}/{res_id}") for _ in range(25)]
    results = await asyncio.gather(*calls)
    commits, releases = results[:25], results[25:]
    if any(r.status_code == 200 for r in commits):
        assert {r.status_code for r in commits} == {200}
        assert {r.status_code for r in releases} == {409}
        assert sum(not r.json()["replayed"] for r in commits) == 1
        expected = "3.500000"
    else:
        assert {r.status_code for r in releases} == {200}
        assert {r.status_code for r in commits} == {409}
        expected = "5.000000"
    bal = await balance(client, "f")
    assert bal["credits_remaining"] == expected and bal["credits_held"] == "0.000000"
    await client.app.state.services.flusher.flush()
    assert await pool.fetchval(
        "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'usage'"
    ) == (1 if expected == "3.500000" else 0)
    await assert_books_balance(pool, redis, keys)


async def test_reserve_is_idempotent_by_request_id(client: Client) -> None:
    first = (await reserve(client, "g", "1", "same")).json()
    again = await reserve(client, "g", "1", "same")
    assert again.status_code == 201
    assert again.json() == {**first, "replayed": True}
    assert (await balance(client, "g"))["credits_held"] == "1.000000"
    other = await reserve(client, "g", "2", "same")
    assert other.status_code == 409


async def test_reserve_402s_and_the_cap_counts_holds(client: Client) -> None:
    r = await reserve(client, "h", "5.000001", "r")
    assert r.status_code == 402 and r.json()["reason"] == "insufficient_credits"
    assert (await balance(client, "h"))["credits_held"] == "0.000000"


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("POST", f"{RES}/nope/commit", {"amount": "1"}, 400),  # not an id reserve gives
        ("POST", f"{RES}/rv1_{'0' * 32}/commit", {"amount": "1"}, 404),
        ("POST", f"{RES}/rv999_{'0' * 32}/commit", {"amount": "1"}, 404),
        ("DELETE", f"{RES}/nope", None, 400),
        ("DELETE", f"{RES}/rv1_{'0' * 32}%0A", None, 400),  # a trailing newline
        ("DELETE", f"{RES}/rv1_{'0' * 32}%0Aforged%20log%20line", None, 400),
        ("POST", f"{RES}/rv1_{'0' * 32}/commit", {"amount": "0"}, 400),
        ("POST", f"{RES}/rv1_{'0' * 32}/commit", {}, 400),
        ("POST", RES, {"user_id": "x", "amount": "1", "request_id": "r", "ttl_seconds": 0}, 400),
        ("POST", RES, {"user_id": "x", "amount": "1", "request_id": "r", "ttl_seconds": 3601}, 400),
        ("POST", RES, {"user_id": "x", "amount": "-1", "request_id": "r"}, 400),
    ],
)
async def test_bad_reservation_calls(
    client: Client, method: str, path: str, body: Any, code: int
) -> None:
    r = await client.request(method, path, json=body)
    assert r.status_code == code, r.text


async def test_reservation_scope(client: Client) -> None:
    made = await client.post("/api/v1/admin/keys", json={"name": "reader", "scopes": ["read"]})
    key = made.json()["key"]
    r = await client.post(
        RES,
        json={"user_id": "x", "amount": "1", "request_id": "r"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 403


async def test_holds_larger_than_the_balance_after_a_downgrade(client: Client) -> None:
    res_id = (await reserve(client, "dn", "4", "r")).json()["reservation_id"]
    down = await client.put("/api/v1/credits/dn/tier", json={"tier": "free"})  # balance 5 -> 0
    assert down.json()["credits_remaining"] == "0.000000"  # shown as 0, never negative
    grant = await client.post(
        "/api/v1/credits/grant", json={"user_id": "dn", "amount": "1", "request_id": "g"}
    )
    assert grant.status_code == 200, grant.text  # a grant is never refused for lack of credits
    assert grant.json()["credits_remaining"] == "0.000000"  # still under the 4.00 hold
    too_much = await commit(client, res_id, "2")
    assert too_much.status_code == 402  # the balance (1.00) cannot pay it
    assert (await commit(client, res_id, "1")).status_code == 200
    assert (await balance(client, "dn"))["credits_remaining"] == "0.000000"


async def test_extend_keeps_a_long_call_s_hold_and_never_revives_an_expired_one(
    client: Client, clock: FakeClock
) -> None:
    """A 60 s hold extended at 50 s by 120 s still holds at 150 s and commits; extending never
    shortens; a hold past its expiry, committed or released cannot be extended (409)."""
    r = (await reserve(client, "x", "1", "long", ttl_seconds=60)).json()
    clock.advance(seconds=50)
    ext = await client.post(f"{RES}/{r['reservation_id']}/extend", json={"ttl_seconds": 120})
    assert ext.status_code == 200, ext.text
    until = datetime.fromisoformat(ext.json()["expires_at"]) - clock.now
    assert timedelta(seconds=120) <= until < timedelta(seconds=122)
    assert ext.json()["held"] == "1.000000" and ext.json()["credits_remaining"] == "4.000000"
    shorter = await client.post(f"{RES}/{r['reservation_id']}/extend", json={"ttl_seconds": 1})
    assert shorter.json()["expires_at"] == ext.json()["expires_at"]  # never shortened
    clock.advance(seconds=100)  # 150 s after the reserve: past the first 60 s
    assert (await balance(client, "x"))["credits_held"] == "1.000000"
    done = await commit(client, r["reservation_id"], "0.4")
    assert done.status_code == 200, done.text
    again = await client.post(f"{RES}/{r['reservation_id']}/extend", json={"ttl_seconds": 60})
    assert again.status_code == 409 and "committed" in again.text
    gone = (await reserve(client, "x", "1", "short", ttl_seconds=10)).json()
    clock.advance(seconds=11)
    late = await client.post(f"{RES}/{gone['reservation_id']}/extend", json={"ttl_seconds": 60})
    assert late.status_code == 409 and "expired" in late.text
    assert (await balance(client, "x"))["credits_remaining"] == "4.600000"
    for bad in ({"ttl_seconds": 0}, {"ttl_seconds": 3601}, {}):
        no = await client.post(f"{RES}/{r['reservation_id']}/extend", json=bad)
        assert no.status_code == 400, no.text
    unknown = f"rv1_{'0' * 32}"
    assert (
        await client.post(f"{RES}/{unknown}/extend", json={"ttl_seconds": 5})
    ).status_code == 404


async def test_the_fast_path_reserves_exactly_as_the_framework_route(client: Client) -> None:
    """POST /api/v1/credits/reservations goes through the plain-ASGI fast path (an LLM proxy
    makes one before every call); Litestar's route stays behind it. Both give the same status
    and body for each case: a hold, a replay, bad fields, a bad body, no credits, no key."""
    import httpx

    framework = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=client.app.app),
        base_url="http://gateway",
        headers={"Authorization": client.headers["Authorization"]},
    )
    cases: list[tuple[str, dict[str, Any], bytes | None]] = [
        ("ok", {"amount": "0.5"}, None),
        ("ok", {"amount": "0.5"}, None),  # the replay
        ("amount", {"amount": "x"}, None),
        ("ttl", {"amount": "1", "ttl_seconds": 0}, None),
        ("unknown", {"amount": "1", "colour": "red"}, None),
        ("missing", {}, None),
        ("broke", {"amount": "100"}, None),
        ("json", {}, b'{"user_id": '),
        ("deep", {}, b"[" * 40 + b"]" * 40),
    ]
    async with framework:
        for name, fields, raw in cases:
            answers = []
            for side, c in (("fast", client), ("framework", framework)):
                body = {"user_id": f"fp-{side}", "request_id": f"fp-{name}", **fields}
                content = raw if raw is not None else json.dumps(body).encode()
                r = await c.post(
                    "/api/v1/credits/reservations",
                    content=content,
                    headers={"Content-Type": "application/json"},
                )
                data = r.json()
                for varying in ("reservation_id", "user_id", "expires_at"):
                    data.pop(varying, None)
                answers.append((r.status_code, data, r.headers.get("retry-after")))
            assert answers[0] == answers[1], name
        bare = {"Authorization": "", "Content-Type": "application/json"}
        no_key = [
            await c.post("/api/v1/credits/reservations", content=b"{}", headers=bare)
            for c in (client, framework)
        ]
        assert [r.status_code for r in no_key] == [401, 401]
        assert no_key[0].json() == no_key[1].json()
