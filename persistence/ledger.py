"""Apply a batch of Redis ledger events to PostgreSQL in one transaction, idempotently."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from persistence import queries
from persistence.db import Executor


@dataclass(frozen=True, slots=True)
class Event:
    """One ledger event as the Lua scripts write it to a shard stream (amounts in micro-credits)."""

    txn: str
    type: str
    user_id: str
    request_id: str
    amount: int
    balance_after: int
    version: int
    ts_ms: int
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    metadata: str | None = None
    tier: str | None = None
    allocation: int | None = None
    cap: int | None = None
    spent: int | None = None  # spending in the period after this event (micro-credits)
    reset: str | None = None  # ISO start of a period this event renewed
    refund_of: str | None = None  # the debit a refund returns
    actor: str | None = None  # the API key name behind an admin action (audited)


log = logging.getLogger("metering.ledger")

# Low-balance alert rules as columns: tiers, kinds, fractions of the allocation spent.
AlertRules = tuple[list[str], list[str], list[Decimal]]

# Ledger request_id of a request whose id was reused after the idempotency window.
REUSED_PREFIX = "sys:reused:"


def _dec(micro: int | None) -> Decimal | None:
    return None if micro is None else Decimal(micro).scaleb(-6)


def _iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class BatchResult:
    inserted: int  # ledger rows newly written (replayed events are not counted)
    users: int  # user rows whose balance moved forward


async def apply_events(
    conn: Executor, events: list[Event], alerts: AlertRules | None = None
) -> BatchResult:
    """Write events to the ledger and move each user's row to its newest state; with alert
    rules, queue the low-balance webhooks whose thresholds the moved users have crossed.

    Run inside a transaction. Replaying events already applied changes nothing: ledger rows are
    keyed by transaction id, a user's row only moves to a higher Redis version, and an alert is
    queued once per user, period and kind.
    """
    inserted = await _insert(conn, events)
    if inserted < len(events):
        inserted += await _insert_reused(conn, events)
    audited = [e for e in events if e.actor]
    if audited:
        await _audit(conn, audited)
    latest: dict[str, Event] = {}
    tiers: dict[str, Event] = {}
    resets: dict[str, Event] = {}
    for e in events:  # stream order is mutation order
        if e.user_id not in latest or latest[e.user_id].version < e.version:
            latest[e.user_id] = e
        if e.tier is not None and (e.user_id not in tiers or tiers[e.user_id].version < e.version):
            tiers[e.user_id] = e
        if e.reset is not None and (
            e.user_id not in resets or resets[e.user_id].version < e.version
        ):
            resets[e.user_id] = e
    users = list(latest)
    status = await conn.execute(
        queries.USERS_APPLY_BATCH,
        users,
        [latest[u].balance_after for u in users],
        [latest[u].version for u in users],
        [tiers[u].tier if u in tiers else None for u in users],
        [tiers[u].allocation if u in tiers else None for u in users],
        [tiers[u].cap if u in tiers else None for u in users],
        [latest[u].spent or 0 for u in users],
        [_iso(resets[u].reset) if u in resets else None for u in users],
    )
    if alerts is not None and alerts[0]:
        await conn.execute(queries.WEBHOOK_QUEUE_ALERTS, users, *alerts)
    return BatchResult(inserted=inserted, users=int(status.split()[-1]))


AUDIT_ACTIONS = {
    "purchase": "credit.grant",
    "bonus": "credit.grant",
    "adjustment": "credit.grant",
    "allocation": "credit.allocate",
    "monthly_reset": "credit.monthly_reset",
    "refund": "credit.refund",
}


async def _audit(conn: Executor, events: list[Event]) -> None:
    await conn.execute(
        queries.AUDIT_INSERT_BATCH,
        [e.txn for e in events],
        [datetime.fromtimestamp(e.ts_ms / 1000, UTC) for e in events],
        [e.actor for e in events],
        [AUDIT_ACTIONS.get(e.type, e.type) for e in events],
        [e.user_id for e in events],
        [e.refund_of or e.tier for e in events],
        [_dec(e.amount) for e in events],
        [e.request_id for e in events],
        [_audit_details(e) for e in events],
    )


def _audit_details(e: Event) -> str:
    details: dict[str, object] = {"type": e.type, "balance_after": str(_dec(e.balance_after))}
    if e.tier is not None:
        details.update(tier=e.tier, allocation=str(_dec(e.allocation)))
    if e.metadata:
        details["metadata"] = json.loads(e.metadata)
    return json.dumps(details)


async def _insert(conn: Executor, events: list[Event], request_ids: list[str] | None = None) -> int:
    new = await conn.fetchval(
        queries.LEDGER_INSERT_BATCH,
        [e.txn for e in events],
        [e.user_id for e in events],
        [e.type for e in events],
        [e.amount for e in events],
        [e.balance_after for e in events],
        request_ids or [e.request_id for e in events],
        [e.model for e in events],
        [e.input_tokens for e in events],
        [e.output_tokens for e in events],
        [e.metadata for e in events],
        [e.version for e in events],
        [e.ts_ms for e in events],
        [e.refund_of for e in events],
    )
    return int(new)


async def _insert_reused(conn: Executor, events: list[Event]) -> int:
    """Events the ledger refused are replays (their transaction id is there: nothing to do) or,
    rarely, a request id reused after Redis forgot it (idempotency TTL): Redis charged it as a new
    request, so the ledger records it too, under a derived id, and the books still balance."""
    known = {
        str(r["id"]) for r in await conn.fetch(queries.LEDGER_KNOWN_IDS, [e.txn for e in events])
    }
    reused = [e for e in events if e.txn not in known]
    if not reused:
        return 0
    for e in reused:
        log.warning(
            "request_id reused after the idempotency window; recorded as a new transaction",
            extra={"user_id": e.user_id, "request_id": e.request_id, "transaction_id": e.txn},
        )
    return await _insert(conn, reused, [f"{REUSED_PREFIX}{e.txn}" for e in reused])


async def try_flush_lock(conn: Executor, stream: str) -> bool:
    """Take the per-stream flush lock for the current transaction, without waiting."""
    return bool(await conn.fetchval(queries.FLUSH_LOCK, stream))


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


async def debit_for_refund(conn: Executor, transaction_id: str) -> DebitRecord | None:
    rec = await conn.fetchrow(queries.DEBIT_FOR_REFUND, transaction_id)
    if rec is None:
        return None
    return DebitRecord(
        rec["user_id"], rec["transaction_type"], rec["amount"], rec["created_at"], rec["refunded"]
    )
