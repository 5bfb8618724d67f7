"""`metering top`: a live terminal view of a gateway (debits/s by outcome, 402s/s, reservation
calls/s by operation and outcome, flush lag, backlog per shard, top spenders), polling
GET /api/v1/ops/counters."""

from __future__ import annotations

import time
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table


def poll(client: httpx.Client) -> dict[str, Any]:
    r = client.get("/api/v1/ops/counters")
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def render(prev: dict[str, Any], cur: dict[str, Any]) -> Group:
    seconds = max(cur["at"] - prev["at"], 1e-9)
    rates = Table(title="debits per second (this gateway)")
    rates.add_column("outcome")
    rates.add_column("per second", justify="right")
    rates.add_column("total", justify="right")
    for outcome in sorted(cur["debits"]):
        total = cur["debits"][outcome]
        rate = (total - prev["debits"].get(outcome, 0.0)) / seconds
        rates.add_row(outcome, f"{rate:,.1f}", f"{total:,.0f}")
    holds = Table(title="reservations per second (this gateway)")
    holds.add_column("operation/outcome")
    holds.add_column("per second", justify="right")
    holds.add_column("total", justify="right")
    before = prev.get("reservations", {})
    for label, total in sorted(cur.get("reservations", {}).items()):
        rate = (total - before.get(label, 0.0)) / seconds
        holds.add_row(label, f"{rate:,.1f}", f"{total:,.0f}")
    flusher = cur["flusher"]
    flush = Table(title="flusher")
    flush.add_column("state", no_wrap=True)
    flush.add_column("value", justify="right", no_wrap=True)
    flush.add_row("status", str(flusher["status"]))
    flush.add_row("lag (s)", str(flusher["oldest_event_age_seconds"]))
    flush.add_row("backlog", str(flusher["backlog"]))
    flush.add_row("dead letters", str(flusher.get("dead_letters", 0)))
    for shard, n in enumerate(flusher["backlog_per_shard"]):
        if n:
            flush.add_row(f"shard {shard} unflushed", str(n))
    spenders = Table(title="top spenders this period (flushed)")
    for column in ("user_id", "tier", "period_spent", "credits_remaining"):
        spenders.add_column(column, no_wrap=True, overflow="ellipsis", max_width=24)
    for row in cur["top_spenders"]:
        spenders.add_row(row["user_id"], row["tier"], row["period_spent"], row["credits_remaining"])
    return Group(rates, holds, flush, spenders)


def run(url: str, key: str, interval: float, once: bool) -> int:
    console = Console()
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=5
    ) as client:
        prev = poll(client)
        time.sleep(interval)
        cur = poll(client)
        if once:
            console.print(render(prev, cur))
            return 0
        with Live(render(prev, cur), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                prev, cur = cur, poll(client)
                live.update(render(prev, cur))
