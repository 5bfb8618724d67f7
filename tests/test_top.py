"""`metering top` renders against a live gateway, from GET /api/v1/ops/counters."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.conftest import ADMIN_KEY, Client
from tests.processes import gateway_process


async def test_ops_counters(client: Client) -> None:
    for i in range(3):
        await client.post(
            "/api/v1/credits/debit",
            json={"user_id": f"s{i}", "amount": str(i + 1), "request_id": "r"},
        )
    await client.app.state.services.flusher.flush()
    data = (await client.get("/api/v1/ops/counters")).json()
    assert data["debits"].get("ok", 0) >= 3
    assert data["flusher"]["backlog"] == 0 and len(data["flusher"]["backlog_per_shard"]) == 4
    assert [s["user_id"] for s in data["top_spenders"]][:3] == ["s2", "s1", "s0"]
    assert data["top_spenders"][0]["period_spent"] == "3.000000"
    made = await client.post("/api/v1/admin/keys", json={"name": "ro", "scopes": ["read"]})
    assert made.status_code == 201, made.text
    await reservation_calls_are_counted(client)
    denied = await client.get(
        "/api/v1/ops/counters", headers={"Authorization": f"Bearer {made.json()['key']}"}
    )
    assert denied.status_code == 403


async def reservation_calls_are_counted(client: Client) -> None:
    """Holds, commits, releases, extends and their refusals, by operation and outcome, in the
    ops counters and in /metrics (they were invisible: only direct debits were counted)."""
    res = "/api/v1/credits/reservations"
    before = (await client.get("/api/v1/ops/counters")).json()["reservations"]
    held = await client.post(res, json={"user_id": "h", "amount": "1", "request_id": "a"})
    rid = held.json()["reservation_id"]
    await client.post(res, json={"user_id": "h", "amount": "1", "request_id": "a"})  # replay
    await client.post(res, json={"user_id": "h", "amount": "50", "request_id": "b"})  # 402
    await client.post(f"{res}/{rid}/extend", json={"ttl_seconds": 60})
    await client.post(f"{res}/{rid}/commit", json={"amount": "0.5"})
    await client.delete(f"{res}/{rid}")  # committed: 409
    after = (await client.get("/api/v1/ops/counters")).json()["reservations"]
    grew = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert grew == {
        "reserve/ok": 1,
        "reserve/replay": 1,
        "reserve/insufficient_credits": 1,
        "extend/ok": 1,
        "commit/ok": 1,
        "release/committed": 1,
    }
    scraped = (await client.get("/metrics")).text
    assert 'metering_reservations_total{operation="commit",outcome="ok"}' in scraped


def test_metering_top_renders_a_live_gateway() -> None:
    with gateway_process(METERING_FLUSH_INTERVAL="0.1") as gw:
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
            for i in range(5):
                c.post(
                    "/api/v1/credits/debit",
                    json={"user_id": "topper", "amount": "0.5", "request_id": f"r{i}"},
                )
            c.post(
                "/api/v1/credits/debit",
                json={"user_id": "topper", "amount": "99", "request_id": "big"},
            )
            c.post(
                "/api/v1/credits/reservations",
                json={"user_id": "topper", "amount": "0.1", "request_id": "hold"},
            )
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.ops.cli",
                "top",
                "--url",
                gw.url,
                "--key",
                ADMIN_KEY,
                "--interval",
                "0.3",
                "--once",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "debits per second" in text and "insufficient_credits" in text and "topper" in text
    assert "status" in text and "lag (s)" in text and "dead letters" in text
    assert max(len(line) for line in text.splitlines()) <= 80  # nothing wrapped or cut
    assert "HTTP Request" not in text + out.stderr  # quiet: no line per request
    assert "reservations per second" in text and "reserve/ok" in text
