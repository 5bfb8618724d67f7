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
