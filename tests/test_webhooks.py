"""Low-balance webhooks: queued by the flusher once per crossing per period, signed, sent from
the outbox to a real HTTP receiver, retried with backoff, given up after the last try."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest

from gateway.base.settings import Settings, settings_from_env
from gateway.credits.tiers import TierConfigError, parse_tiers
from gateway.flusher.webhooks import WebhookSender, sign, verify
from tests.conftest import Client, FakeClock, gateway

SECRET = "whsec-test"


class Receiver:
    """An HTTP server of the test's own that records every POST and fails the first few."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append((dict(self.headers), body))
                fail = len(receiver.got) <= receiver.fail_first
                self.send_response(500 if fail else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


async def debit(c: Client, user: str, amount: str, rid: str) -> None:
    r = await c.post(
        "/api/v1/credits/debit", json={"user_id": user, "amount": amount, "request_id": rid}
    )
    assert r.status_code == 200, r.text


async def spend_past_80(
    settings: Settings, clock: FakeClock, receiver: Receiver, user: str
) -> None:
    """Queue one alert (used_80) for user: 4.1 of the trial's 5.00 spent, flushed."""
    async with gateway(settings, clock, webhook_url=receiver.url, webhook_secret=SECRET) as c:
        await debit(c, user, "4.1", "a")
        await c.app.state.services.flusher.flush()


async def queued(pool: asyncpg.Pool, user: str) -> list[str]:
    rows = await pool.fetch("SELECT kind FROM webhook_outbox WHERE user_id = $1 ORDER BY id", user)
    return [r["kind"] for r in rows]


async def test_each_threshold_crossed_sends_one_signed_webhook(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    async with gateway(settings, clock, webhook_url=receiver.url, webhook_secret=SECRET) as c:
        flush = c.app.state.services.flusher.flush
        await debit(c, "lb", "3.9", "a")  # 78 % of the trial's 5.00
        await flush()
        assert await queued(pool, "lb") == []
        await debit(c, "lb", "0.2", "b")  # 82 %
        await flush()
        assert await queued(pool, "lb") == ["used_80"]
        await debit(c, "lb", "0.7", "c")  # 96 %
        await debit(c, "other", "4.5", "c")  # another user, 90 %
        await flush()
        await flush()
        assert await queued(pool, "lb") == ["used_80", "used_95"]
        await debit(c, "lb", "0.2", "d")  # nothing left
        await flush()
        assert await queued(pool, "lb") == ["used_80", "used_95", "depleted"]
        sender = WebhookSender(pool, receiver.url, SECRET)
        try:
            assert (await sender.send_due()).delivered == 4
            assert (await sender.send_due()).delivered == 0  # each sent once
        finally:
            await sender.aclose()
    alerts = receiver.alerts()
    assert [(a["user_id"], a["kind"]) for a in alerts] == [
        ("lb", "used_80"),
        ("lb", "used_95"),
        ("other", "used_80"),
        ("lb", "depleted"),
    ]
    assert alerts[-1]["credits_remaining"] == "0.000000"
    assert alerts[-1]["period_spent"] == "5.000000"
    assert (
        alerts[1] | {"threshold": "0.95", "tier": "trial", "type": "credits.low_balance"}
        == (alerts[1])
    )
    for headers, body in receiver.got:
        assert verify(SECRET, body, headers["X-Metering-Signature"])
        assert not verify("another-secret", body, headers["X-Metering-Signature"])
    assert len({h["X-Metering-Event-Id"] for h, _ in receiver.got}) == 4


async def test_failed_deliveries_are_retried_with_the_same_id_then_given_up(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    await spend_past_80(settings, clock, receiver, "r1")
    receiver.fail_first = 2
    sender = WebhookSender(pool, receiver.url, SECRET, max_attempts=5, backoff=0)
    try:
        assert (await sender.send_due()).retried == 1
        assert (await sender.send_due()).retried == 1
        assert (await sender.send_due()).delivered == 1
        row = await pool.fetchrow("SELECT attempts, delivered_at, last_error FROM webhook_outbox")
        assert row["attempts"] == 3 and row["delivered_at"] is not None
        assert row["last_error"] is None
        assert len({h["X-Metering-Event-Id"] for h, _ in receiver.got}) == 1  # one alert
        # a receiver that never answers 2xx: tried max_attempts times, then marked failed
        await pool.execute(
            "UPDATE webhook_outbox SET delivered_at = NULL, attempts = 0, next_attempt_at = now()"
        )
        receiver.fail_first = 10**6
        outcomes = [await sender.send_due() for _ in range(6)]
        assert [(s.retried, s.failed) for s in outcomes] == [(1, 0)] * 4 + [(0, 1), (0, 0)]
        row = await pool.fetchrow("SELECT attempts, failed_at, last_error FROM webhook_outbox")
        assert row["attempts"] == 5 and row["failed_at"] is not None
        assert row["last_error"] == "HTTP 500"
    finally:
        await sender.aclose()


async def test_a_retry_waits_for_its_backoff(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    await spend_past_80(settings, clock, receiver, "slow")
    receiver.fail_first = 1
    sender = WebhookSender(pool, receiver.url, SECRET, backoff=3600)
    try:
        assert (await sender.send_due()).retried == 1
        assert (await sender.send_due()).delivered == 0  # not due for an hour
        assert len(receiver.got) == 1
    finally:
        await sender.aclose()


async def test_a_new_period_alerts_again(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    async with gateway(settings, clock, webhook_url=receiver.url, webhook_secret=SECRET) as c:
        await debit(c, "month", "4.5", "a")
        await c.app.state.services.flusher.flush()
        clock.advance(days=31)  # the next calendar month: the allocation renews
        await debit(c, "month", "4.5", "b")
        await c.app.state.services.flusher.flush()
    rows = await pool.fetch("SELECT kind, period_start FROM webhook_outbox ORDER BY id")
    assert [r["kind"] for r in rows] == ["used_80", "used_80"]
    assert rows[0]["period_start"] < rows[1]["period_start"]


async def test_without_a_webhook_url_nothing_is_queued(client: Client, pool: asyncpg.Pool) -> None:
    await debit(client, "quiet", "5", "a")
    await client.app.state.services.flusher.flush()
    assert await pool.fetchval("SELECT count(*) FROM webhook_outbox") == 0


def test_a_webhook_url_needs_a_secret() -> None:
    with pytest.raises(SystemExit, match="METERING_WEBHOOK_SECRET"):
        settings_from_env({"METERING_WEBHOOK_URL": "http://example.invalid/h"})


def test_signatures_bind_the_body_and_the_time() -> None:
    body = b'{"kind":"used_80"}'
    header = sign(SECRET, body, 1_800_000_000)
    assert verify(SECRET, body, header, now=1_800_000_100)
    assert not verify(SECRET, body + b" ", header, now=1_800_000_100)  # body changed
    assert not verify(SECRET, body, header, now=1_800_001_000)  # too old: a replay
    assert not verify(SECRET, body, "garbage", now=1_800_000_100)


async def test_the_background_flushes_and_sends_on_its_own(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    async with gateway(
        settings, clock, webhook_url=receiver.url, webhook_secret=SECRET, flush_interval=0.1
    ) as c:
        await debit(c, "auto", "5", "a")
        for _ in range(200):  # flushed and sent within a few ticks
            if len(receiver.got) >= 3:
                break
            await asyncio.sleep(0.05)
    assert [(a["user_id"], a["kind"]) for a in receiver.alerts()] == [
        ("auto", "used_80"),
        ("auto", "used_95"),
        ("auto", "depleted"),
    ]


@pytest.mark.parametrize("alerts", ["[0]", "[101]", "[80.5]", '["80"]', "80", "[true]"])
def test_bad_alert_thresholds_are_refused(alerts: str) -> None:
    text = f'default_tier = "t"\n[tiers.t]\nallocation = "1"\nalerts = {alerts}\n'
    with pytest.raises(TierConfigError, match="alerts"):
        parse_tiers(text)


async def test_a_block_expiring_soon_sends_one_credits_expiring_webhook(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    """METERING_EXPIRING_NOTICE 1 day, METERING_EXPIRING_MIN 1.00: of three bonuses, the one
    of 2.00 expiring in 12 hours is announced once (however often the cron runs); the one of
    0.50 is too small, the one expiring in 3 days too far off until the clock gets there."""
    from gateway.flusher.webhooks import queue_expiring

    async with gateway(settings, clock, webhook_url=receiver.url, webhook_secret=SECRET) as c:
        for rid, amount, hours in (("soon", "2", 12), ("small", "0.5", 12), ("later", "2", 72)):
            at = (clock.now + timedelta(hours=hours)).isoformat()
            body = {
                "user_id": "w",
                "amount": amount,
                "request_id": rid,
                "kind": "bonus",
                "expires_at": at,
            }
            assert (await c.post("/api/v1/credits/grant", json=body)).status_code == 200
        await c.app.state.services.flusher.flush()
        service = c.app.state.services.credits
        assert await queue_expiring(pool, await service.now(), 86400, 1_000_000) == 1
        assert await queue_expiring(pool, await service.now(), 86400, 1_000_000) == 0
        clock.advance(hours=50)  # "later" is 22 hours away now; "soon" expired
        await c.get("/api/v1/credits/balance", params={"user_id": "w"})
        await c.app.state.services.flusher.flush()
        assert await queue_expiring(pool, await service.now(), 86400, 1_000_000) == 1
        sender = WebhookSender(pool, receiver.url, SECRET)
        try:
            assert (await sender.send_due()).delivered == 2
        finally:
            await sender.aclose()
    alerts = receiver.alerts()
    assert [(a["type"], a["remaining"]) for a in alerts] == [("credits.expiring", "2.000000")] * 2
    assert len({a["grant_id"] for a in alerts}) == 2
    assert {a["kind"] for a in alerts} == {"bonus"}


@pytest.mark.parametrize("value", ["-1", "abc", "0.0000001"])
def test_bad_expiring_settings_are_refused(value: str) -> None:
    with pytest.raises(SystemExit, match="METERING_EXPIRING_MIN"):
        settings_from_env({"METERING_EXPIRING_MIN": value})
