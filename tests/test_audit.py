"""The audit log: every admin action with the acting key's name, written exactly once."""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from gateway.credits.keys import Keys
from persistence.events import line_of
from persistence.ledger import apply_events
from tests.conftest import Client


async def test_admin_actions_are_audited_with_the_actor(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    made = await client.post("/api/v1/admin/keys", json={"name": "ops-alice", "scopes": ["admin"]})
    alice = {"Authorization": f"Bearer {made.json()['key']}"}
    debit = await client.post(
        "/api/v1/credits/debit", json={"user_id": "u", "amount": "1", "request_id": "d"}
    )
    calls = [
        (
            "POST",
            "/api/v1/credits/grant",
            {"user_id": "u", "amount": "2", "request_id": "g", "reason": "goodwill"},
        ),
        ("PUT", "/api/v1/credits/u/tier", {"tier": "starter"}),
        ("POST", "/api/v1/credits/u/reset", {"request_id": "rs"}),
        (
            "POST",
            "/api/v1/credits/refund",
            {"user_id": "u", "transaction_id": debit.json()["transaction_id"], "request_id": "rf"},
        ),
        ("PUT", "/api/v1/pricing/gpt-4o", {"input_per_million": "1", "output_per_million": "2"}),
    ]
    for method, url, body in calls:
        r = await client.request(method, url, json=body, headers=alice)
        assert r.status_code == 200, r.text
    assert (await client.delete("/api/v1/admin/keys/ops-alice", headers=alice)).status_code == 204
    # snapshot the events, flush, then replay them: the audit rows are written once
    events = [line_of(f) for s in keys.all_streams() for _, f in await redis.xrange(s)]
    await client.app.state.services.flusher.flush()
    async with pool.acquire() as conn, conn.transaction():
        await apply_events(conn, events)

    page = (await client.get("/api/v1/audit")).json()
    got = [(e["actor"], e["action"], e["user_id"], e["amount"]) for e in page["entries"]]
    assert sorted(got, key=str) == sorted(
        [
            ("bootstrap-admin", "key.create", None, None),
            ("ops-alice", "credit.grant", "u", "2.000000"),
            ("ops-alice", "credit.allocate", "u", "15.000000"),
            # the allocation block (19 left of 20) renews to 20; the purchase of 2 stays: 21 -> 22
            ("ops-alice", "credit.monthly_reset", "u", "1.000000"),
            ("ops-alice", "credit.refund", "u", "1.000000"),
            ("ops-alice", "pricing.set", None, None),
            ("ops-alice", "key.revoke", None, None),
        ],
        key=str,
    )
    grant = next(e for e in page["entries"] if e["action"] == "credit.grant")
    assert grant["details"]["metadata"] == {"reason": "goodwill"}
    assert grant["request_id"] == "g"

    only_u = (await client.get("/api/v1/audit", params={"user_id": "u"})).json()["entries"]
    assert len(only_u) == 4 and {e["user_id"] for e in only_u} == {"u"}
    refunds = (await client.get("/api/v1/audit", params={"action": "credit.refund"})).json()
    assert [e["target"] for e in refunds["entries"]] == [debit.json()["transaction_id"]]

    first = (await client.get("/api/v1/audit", params={"limit": 4})).json()
    rest = (await client.get("/api/v1/audit", params={"cursor": first["next_cursor"]})).json()
    assert len(first["entries"]) == 4 and len(rest["entries"]) == 3
    assert rest["next_cursor"] is None
    assert {e["id"] for e in first["entries"]}.isdisjoint({e["id"] for e in rest["entries"]})


async def test_debits_are_not_audited_and_audit_needs_admin(client: Client) -> None:
    await client.post(
        "/api/v1/credits/debit", json={"user_id": "u", "amount": "1", "request_id": "d"}
    )
    await client.app.state.services.flusher.flush()
    assert (await client.get("/api/v1/audit")).json()["entries"] == []
    made = await client.post("/api/v1/admin/keys", json={"name": "reader", "scopes": ["read"]})
    r = await client.get("/api/v1/audit", headers={"Authorization": f"Bearer {made.json()['key']}"})
    assert r.status_code == 403
    assert (await client.get("/api/v1/audit", params={"cursor": "zz"})).status_code == 400
