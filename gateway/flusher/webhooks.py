"""Low-balance webhooks: sent from the PostgreSQL outbox the flusher fills (persistence/
queries.py WEBHOOK_QUEUE_ALERTS), never from the hot path.

Each POST carries the alert as JSON and these headers:
- ``X-Metering-Event-Id``: the alert's id; a retry sends the same id, so receivers can drop
  duplicates (delivery is at least once: a sender that dies after the POST and before marking
  it delivered sends it again when its lease ends);
- ``X-Metering-Signature``: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` with
  METERING_WEBHOOK_SECRET as the key (see ``verify``).
A 2xx answer marks the alert delivered; anything else (or no answer within the timeout) is tried
again after 2, 4, 8 ... seconds (at most an hour), and after webhook_max_attempts it is marked
failed and kept, with its last error, for operators.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import httpx

from persistence import queries

log = logging.getLogger("metering.webhooks")

LEASE_SECONDS = 60.0


async def queue_expiring(
    pool: asyncpg.Pool, now: datetime, notice_seconds: float, min_micro: int
) -> int:
    """Queue a credits.expiring webhook for each open block of at least min_micro credits that
    expires within notice_seconds of now (once per block, however often this runs); returns
    how many were queued."""
    status = await pool.execute(queries.WEBHOOK_QUEUE_EXPIRING, now, notice_seconds, min_micro)
    return int(status.split()[-1])


def sign(secret: str, body: bytes, at: int) -> str:
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def verify(
    secret: str, body: bytes, header: str, tolerance: float = 300, now: float | None = None
) -> bool:
    """What a receiver does: the signature matches and is no older than tolerance seconds."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        at = int(parts["t"])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    expected = sign(secret, body, at).split("v1=", 1)[1]
    return abs(now - at) <= tolerance and hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(slots=True)
class SendStats:
    delivered: int = 0
    retried: int = 0
    failed: int = 0


class WebhookSender:
    def __init__(
        self,
        pool: asyncpg.Pool,
        url: str,
        secret: str,
        max_attempts: int = 12,
        client: httpx.AsyncClient | None = None,
        backoff: float = 2.0,
    ) -> None:
        self.pool = pool
        self.url = url
        self.secret = secret
        self.max_attempts = max_attempts
        self.client = client or httpx.AsyncClient(timeout=5.0)
        self.backoff = backoff

    async def send_due(self, limit: int = 100) -> SendStats:
        """Send the alerts that are due, one claimed batch; returns what happened."""
        stats = SendStats()
        rows = await self.pool.fetch(queries.WEBHOOK_CLAIM, limit, LEASE_SECONDS)
        for row in rows:
            body = row["payload"].encode()
            headers = {
                "Content-Type": "application/json",
                "X-Metering-Event-Id": str(row["event_id"]),
                "X-Metering-Signature": sign(self.secret, body, int(time.time())),
            }
            error = None
            try:
                answer = await self.client.post(self.url, content=body, headers=headers)
                if not answer.is_success:
                    error = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            if error is None:
                await self.pool.execute(queries.WEBHOOK_DELIVERED, row["id"])
                stats.delivered += 1
                continue
            last = row["attempts"] >= self.max_attempts
            delay = min(self.backoff * 2 ** (row["attempts"] - 1), 3600.0)
            await self.pool.execute(queries.WEBHOOK_RETRY, row["id"], delay, last, error)
            if last:
                stats.failed += 1
                log.error(
                    "webhook %s given up after %d tries: %s",
                    row["event_id"],
                    row["attempts"],
                    error,
                )
            else:
                stats.retried += 1
                log.warning("webhook %s failed (%s); again in %.0fs", row["event_id"], error, delay)
        return stats

    async def aclose(self) -> None:
        await self.client.aclose()
