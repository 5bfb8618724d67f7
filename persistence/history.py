"""Reading the ledger: a user's transactions page by page, and usage summaries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
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


async def usage(
    conn: Executor, user_id: str, start: datetime, end: datetime, group_by: GroupBy
) -> list[UsageRow]:
    rows: list[Any] = await conn.fetch(_USAGE[group_by], user_id, start, end)
    return [UsageRow(**dict(r)) for r in rows]
