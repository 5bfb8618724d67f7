"""/metrics in the Prometheus text format: counters summed over all workers, backlog from Redis."""

from __future__ import annotations

import re

import httpx

from tests.conftest import ADMIN_KEY, Client
from tests.processes import gateway_process


def value(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_metrics_count_outcomes_and_show_the_backlog(client: Client) -> None:
    before = (await client.get("/metrics")).text
    for i in range(3):
        await client.post(
            "/api/v1/credits/debit", json={"user_id": "m", "amount": "1", "request_id": f"r{i}"}
        )
    await client.post(
        "/api/v1/credits/debit", json={"user_id": "m", "amount": "1", "request_id": "r0"}
    )  # replay
    await client.post(
        "/api/v1/credits/debit", json={"user_id": "m", "amount": "9", "request_id": "big"}
    )  # 402
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text
    for outcome, n in (("ok", 3), ("replay", 1), ("insufficient_credits", 1)):
        name = f'metering_debits_total{{outcome="{outcome}"}}'
        assert value(after, name) - value(before, name) == n, outcome
    assert value(after, "metering_hydrations_total") >= 1
    assert 'metering_stream_backlog{shard="0"}' in after
    assert value(after, "metering_flusher_behind") == 0
    assert "metering_debit_seconds_bucket" in after
    assert (await client.get("/metrics", headers={"Authorization": ""})).status_code == 401


def test_two_workers_are_summed_whichever_answers_the_scrape() -> None:
    with gateway_process(workers=2, METERING_FLUSH_INTERVAL="0.2") as gw:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=gw.url, headers=headers) as c:
            for i in range(40):
                assert (
                    c.post(
                        "/api/v1/credits/debit",
                        json={"user_id": f"w{i % 4}", "amount": "0.1", "request_id": f"r{i}"},
                    ).status_code
                    == 200
                )
        scrapes = set()
        for _ in range(6):  # new connections: both workers answer some of these
            text = httpx.get(f"{gw.url}/metrics", headers=headers).text
            scrapes.add(value(text, 'metering_debits_total{outcome="ok"}'))
        assert scrapes == {40.0}


async def test_every_answer_is_counted_by_status_with_the_backlog_ceiling(client: Client) -> None:
    """metering_http_responses_total{code} counts the fast path's answers and the framework's
    alike (the alert rules' 5xx rate), and the backlog ceiling is a gauge beside the backlog."""
    name = 'metering_http_responses_total{code="%s"}'
    before = (await client.get("/metrics")).text
    ok = {"user_id": "h", "amount": "1", "request_id": "h1"}
    assert (await client.post("/api/v1/credits/debit", json=ok)).status_code == 200
    bare = {"Authorization": ""}
    assert (await client.post("/api/v1/credits/debit", json=ok, headers=bare)).status_code == 401
    assert (await client.get("/api/v1/tiers", headers=bare)).status_code == 401
    assert (await client.get("/api/v1/credits/balance?user_id=h")).status_code == 200
    after = (await client.get("/metrics")).text
    assert value(after, name % 401) - value(before, name % 401) == 2
    assert value(after, name % 200) - value(before, name % 200) == 3  # and the first scrape
    assert value(after, "metering_stream_backlog_max") == 500_000
