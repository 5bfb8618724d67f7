"""Reading the ledger: a user's transactions page by page, and usage summaries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from persistence import queries
from persistence.db import Executor

GroupBy = Literal["model", "service", "day"]
_USAGE = {
    "model": queries.USAGE_BY_MODEL,
    "service": queries.USAGE_BY_SERVICE,
    "day": queries.USAGE_BY_DAY,
}


@dataclass(frozen=True, slots=True)
class LedgerRow:
    id: uuid.UUID
    transaction_type: str
    amount: Decimal
    balance_after: Decimal
    request_id: str
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    metadata: str | None
    refund_of: uuid.UUID | None
    created_at: datetime
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class UsageRow:
    key: str | None  # None: the debits that named no model (no service)
    requests: int
    credits: Decimal
    input_tokens: int
    output_tokens: int


async def ledger_page(
    conn: Executor, user_id: str, before: tuple[datetime, uuid.UUID], limit: int
) -> list[LedgerRow]:
    rows = await conn.fetch(queries.LEDGER_PAGE, user_id, before[0], before[1], limit)
    return [LedgerRow(**dict(r)) for r in rows]


def _floor(t: datetime, span: str) -> datetime:
    t = t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return t.replace(hour=0) if span == "day" else t


def _ceil(t: datetime, span: str) -> datetime:
    floor = _floor(t, span)
    return floor if floor == t else floor + (timedelta(days=1) if span == "day" else _HOUR)


_HOUR = timedelta(hours=1)


def report_spans(start: datetime, end: datetime) -> tuple[datetime, ...]:
    """[start, end) cut for a usage report: (start, h0, d0, d1, h1, end), each no earlier than
    the one before, with [d0, d1) the whole UTC days, [h0, d0) and [d1, h1) the whole hours
    left, [start, h0) and [h1, end) the rest. A span with nothing whole collapses onto the
    next bound, so every instant of [start, end) is in exactly one part."""
    h0, h1 = _ceil(start, "hour"), _floor(end, "hour")
    if h0 >= h1:
        return start, end, end, end, end, end
    d0, d1 = _ceil(h0, "day"), _floor(h1, "day")
    if d0 >= d1:
        d0 = d1 = h1
    return start, h0, d0, d1, h1, end


async def usage(
    conn: Executor, user_id: str, start: datetime, end: datetime, group_by: GroupBy
) -> list[UsageRow]:
    rows: list[Any] = await conn.fetch(_USAGE[group_by], user_id, *report_spans(start, end))
    return [UsageRow(**dict(r)) for r in rows]


async def usage_summary_drift(conn: Executor, limit: int) -> list[dict[str, object]]:
    """Up to `limit` hour or day summaries that differ from the ledger's usage rows: `side` says
    which holds the row ('ledger': the summaries lack it or sum it otherwise)."""
    return [dict(r) for r in await conn.fetch(queries.USAGE_SUMMARY_DRIFT, limit)]
