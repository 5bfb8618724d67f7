"""Apply a batch of Redis ledger events to PostgreSQL in one transaction, idempotently."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg

from persistence import queries
from persistence.db import Executor
from persistence.events import SEP, fields

log = logging.getLogger("metering.ledger")

# Low-balance alert rules as columns: tiers, kinds, fractions of the allocation spent.
AlertRules = tuple[list[str], list[str], list[Decimal]]

# Ledger request_id of a request whose id was reused after the idempotency window.
REUSED_PREFIX = "sys:reused:"
DEFAULT_WINDOW_MS = 24 * 3600 * 1000  # METERING_IDEMPOTENCY_TTL's default
DEFAULT_HORIZON_MS = 30 * 24 * 3600 * 1000  # METERING_RETRY_HORIZON's default

LINES = "\x1e"  # between the event lines of a batch (see queries._EVENTS)
_USAGE = "usage" + SEP


@dataclass(frozen=True, slots=True)
class BatchResult:
    inserted: int  # ledger rows newly written (replayed events are not counted)
    users: int  # user rows whose balance moved forward
    regressed: tuple[str, ...] = ()  # users Redis took changes back from (a failover)


async def apply_events(
    conn: Executor,
    events: Sequence[str],
    alerts: AlertRules | None = None,
    window_ms: int = DEFAULT_WINDOW_MS,
    horizon_ms: int = DEFAULT_HORIZON_MS,
) -> BatchResult:
    """Write events (lines, persistence/events.py) to the ledger and move each user's row to
    its newest state; with alert rules, queue the low-balance webhooks whose thresholds the
    moved users have crossed.

    Run inside a transaction. Replaying events already applied changes nothing: ledger rows are
    keyed by transaction id, a user's row only moves to a higher Redis version, and an alert is
    queued once per user, period and kind. A request Redis charged again within the idempotency
    window (window_ms) because it had lost the record of the first, or after the window but
    within the retry horizon (horizon_ms) with the same type, amount, model and tokens, is not
    booked: its user is among the regressed, whom the flusher resyncs, so the client is charged
    once. A request id reused past the horizon, or after the window with another body, is a new
    request (booked under sys:reused:).
    """
    if not events:
        return BatchResult(inserted=0, users=0)
    batch = LINES.join(events)
    row = await conn.fetchrow(queries.LEDGER_APPLY_BATCH, batch)
    assert row is not None
    inserted, users = int(row["inserted"]), row["users"] or []
    regressed = list(row["regressed"] or ())
    if inserted < len(events):
        inserted += await _insert_reused(conn, events, batch, window_ms, horizon_ms)
        unbooked = await conn.fetch(queries.LEDGER_UNBOOKED, batch, window_ms, horizon_ms)
        refused = [r for r in unbooked if not r["forgotten"]]
        if refused:  # the flusher sets the event aside with this reason
            first = refused[0]
            raise ValueError(
                f"system request id {first['rid']!r} of user {first['user_id']!r} is already "
                "in the ledger under another transaction; not booked twice"
            )
        for r in unbooked:
            log.warning(
                "a retry Redis had forgotten (a failover, Redis emptied, or past its window) "
                "was charged again; it is booked once and the second charge given back",
                extra={"user_id": r["user_id"], "request_id": r["rid"]},
            )
        regressed += [r["user_id"] for r in unbooked]
    # admin actions are audited; usage events never have an actor, so only the others are read
    others = [fields(e) for e in events if not e.startswith(_USAGE)]
    audited = [f for f in others if f["actor"]]
    if audited:
        await _audit(conn, audited)
    if alerts is not None and alerts[0]:
        await conn.execute(queries.WEBHOOK_QUEUE_ALERTS, users, *alerts)
    return BatchResult(
        inserted=inserted, users=int(row["moved"]), regressed=tuple(dict.fromkeys(regressed))
    )


async def _insert_reused(
    conn: Executor, events: Sequence[str], batch: str, window_ms: int, horizon_ms: int
) -> int:
    """Events the ledger refused are replays (their transaction id is there: nothing to do) or,
    rarely, a request id reused after Redis forgot it (idempotency TTL): Redis charged it as a new
    request, so the ledger records it too, under a derived id, and the books still balance."""
    rows = await conn.fetch(
        queries.LEDGER_INSERT_REUSED, batch, REUSED_PREFIX, window_ms, horizon_ms
    )
    if rows:
        request_ids = {f["tx"]: f["rid"] for f in map(fields, events)}
        for r in rows:
            log.warning(
                "request_id reused after the idempotency window with another body, or past the "
                "retry horizon; recorded as a new transaction",
                extra={
                    "user_id": r["user_id"],
                    "request_id": request_ids[str(r["id"])],
                    "transaction_id": str(r["id"]),
                },
            )
    return len(rows)


AUDIT_ACTIONS = {
    "purchase": "credit.grant",
    "bonus": "credit.grant",
    "adjustment": "credit.grant",
    "allocation": "credit.allocate",
    "monthly_reset": "credit.monthly_reset",
    "refund": "credit.refund",
}


def _dec(micro: str) -> Decimal:
    return Decimal(int(micro)).scaleb(-6)


async def _audit(conn: Executor, events: list[dict[str, str]]) -> None:
    await conn.execute(
        queries.AUDIT_INSERT_BATCH,
        [e["tx"] for e in events],
        [datetime.fromtimestamp(int(e["ts"]) / 1000, UTC) for e in events],
        [e["actor"] for e in events],
        [AUDIT_ACTIONS.get(e["t"], e["t"]) for e in events],
        [e["u"] for e in events],
        [e["ref"] or e["tier"] or None for e in events],
        [_dec(e["amt"]) for e in events],
        [e["rid"] for e in events],
        [_audit_details(e) for e in events],
    )


def _audit_details(e: Mapping[str, str]) -> str:
    details: dict[str, object] = {"type": e["t"], "balance_after": str(_dec(e["bal"]))}
    if e["tier"]:
        details.update(tier=e["tier"], allocation=str(_dec(e["alloc"])))
    if e["meta"]:
        details["metadata"] = json.loads(e["meta"])
    return json.dumps(details)


LOCK_WAIT_MS = 5000  # the longest a flush waits for a lock (cold paths hold theirs for ms)


async def try_flush_lock(conn: Executor, stream: str) -> bool:
    """Take the stream for a flush in the current transaction: False at once when another
    flusher holds it, else once the cold paths loading its users have committed (False if that
    takes over LOCK_WAIT_MS: the transaction is then aborted, and the shard waits for the
    next flush)."""
    if not await conn.fetchval(queries.FLUSHER_LOCK, stream, str(LOCK_WAIT_MS)):
        return False
    try:
        await conn.execute(queries.FLUSH_LOCK_WAIT, stream)
    except asyncpg.LockNotAvailableError:
        return False
    return True


async def wait_for_flush(conn: Executor, streams: list[str]) -> None:
    """Wait until no flush of the streams is under way, and keep new ones out until the current
    transaction ends (the cold path: gateway/flusher/flush.py flush_shard)."""
    await conn.execute(queries.FLUSH_WAIT, streams)


async def ledger_sum(conn: Executor, user_id: str) -> tuple[Decimal, int]:
    rec = await conn.fetchrow(queries.LEDGER_SUM, user_id)
    assert rec is not None
    return rec["total"], rec["n"]


@dataclass(frozen=True, slots=True)
class DebitRecord:
    user_id: str
    type: str
    amount: Decimal  # negative for a debit
    created_at: datetime
    refunded: Decimal  # positive: what flushed refunds of it returned
    draws: str  # the blocks it drew from, 'id:micro' in drawing order ('' before blocks)
    blocks: str  # those blocks' kind, priority and times (queries.DEBIT_FOR_REFUND)


async def debit_for_refund(conn: Executor, transaction_id: str) -> DebitRecord | None:
    rec = await conn.fetchrow(queries.DEBIT_FOR_REFUND, transaction_id)
    if rec is None:
        return None
    return DebitRecord(
        rec["user_id"],
        rec["transaction_type"],
        rec["amount"],
        rec["created_at"],
        rec["refunded"],
        rec["draws"] or "",
        rec["blocks"] or "",
    )


async def ledger_totals_drift(conn: Executor, limit: int) -> list[dict[str, object]]:
    """Up to `limit` users whose kept ledger total (ledger_totals) differs from their rows':
    `side` says which holds the figures ('ledger': the rows' sum and count)."""
    return [dict(r) for r in await conn.fetch(queries.LEDGER_TOTALS_DRIFT, limit)]
