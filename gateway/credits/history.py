"""History from PostgreSQL: a user's ledger (newest first, cursor pages) and usage summaries.
Both say how many of the user's changes are still in Redis, waiting for the flusher."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from gateway.base.errors import BadRequest, NotFound
from gateway.credits.clock import period_end, period_start
from gateway.credits.cursors import TIME_RANGE, decode_cursor, encode_cursor, in_range
from gateway.credits.inputs import MAX_BODY_DEPTH, too_deep
from gateway.credits.money import fmt, to_micro
from gateway.credits.schemas import Transaction, TransactionsPage, UsageGroup, UsageReport
from gateway.credits.service import CreditService
from persistence.history import GroupBy, LedgerRow, ledger_page, usage
from persistence.users import get_user


def _amount(d: Decimal) -> str:
    return fmt(to_micro(d))


def parse_time(value: str, name: str) -> datetime:
    """A from/to query value: ISO 8601, UTC when it names no zone, within TIME_RANGE."""
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 date or time, got {value[:40]!r}") from None
    bounded = in_range(t if t.tzinfo else t.replace(tzinfo=UTC))
    if bounded is None:
        raise BadRequest(f"{name} must be {TIME_RANGE}, got {value[:40]!r}")
    return bounded


class HistoryService:
    def __init__(self, credits: CreditService) -> None:
        self.credits = credits

    async def transactions(self, user_id: str, limit: int, cursor: str | None) -> TransactionsPage:
        before = decode_cursor(cursor)
        pending = await self._unflushed(user_id)
        rows = await ledger_page(self.credits.pool, user_id, before, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return TransactionsPage(
            user_id=user_id,
            transactions=[_transaction(r) for r in rows],
            next_cursor=encode_cursor(rows[-1].created_at, rows[-1].id) if more else None,
            unflushed_events=pending,
        )

    async def usage(
        self, user_id: str, start: str | None, end: str | None, group_by: GroupBy
    ) -> UsageReport:
        now = self.credits.clock()
        t0 = parse_time(start, "from") if start else period_start(now, self.credits.period)
        t1 = parse_time(end, "to") if end else period_end(now, self.credits.period)
        if t0 >= t1:
            raise BadRequest("from must be earlier than to")
        pending = await self._unflushed(user_id)
        groups = await usage(self.credits.pool, user_id, t0, t1, group_by)
        return UsageReport(
            user_id=user_id,
            start=t0.isoformat(),
            end=t1.isoformat(),
            group_by=group_by,
            groups=[
                UsageGroup(g.key, g.requests, _amount(g.credits), g.input_tokens, g.output_tokens)
                for g in groups
            ],
            total_requests=sum(g.requests for g in groups),
            total_credits=_amount(sum((g.credits for g in groups), Decimal(0))),
            unflushed_events=pending,
        )

    async def _unflushed(self, user_id: str) -> int:
        row = await get_user(self.credits.pool, user_id)
        ver = await self.credits.redis.hget(self.credits.keys.user(user_id), "ver")
        if row is None and ver is None:
            raise NotFound(f"unknown user {user_id!r}")
        flushed = row.redis_version if row is not None else 0
        return max(int(ver or 0) - flushed, 0)


def _metadata(text: str) -> dict[str, Any]:
    """A row's metadata; one stored before metadata was bounded may nest too deeply to be
    answered, and is shown as such instead of failing the whole page."""
    try:
        value: dict[str, Any] = msgspec.json.decode(text)
    except RecursionError:
        pass
    else:
        if not too_deep(value, MAX_BODY_DEPTH):
            return value
    return {"unreadable": f"this metadata nests more than {MAX_BODY_DEPTH} levels"}


def _transaction(r: LedgerRow) -> Transaction:
    return Transaction(
        transaction_id=str(r.id),
        type=r.transaction_type,
        amount=_amount(r.amount),
        balance_after=_amount(r.balance_after),
        request_id=r.request_id,
        model=r.model,
        input_tokens=r.input_tokens,
        output_tokens=r.output_tokens,
        metadata=_metadata(r.metadata) if r.metadata else None,
        refund_of=str(r.refund_of) if r.refund_of else None,
        created_at=r.created_at.isoformat(),
        cached_input_tokens=r.cached_input_tokens,
        cache_write_tokens=r.cache_write_tokens,
        reasoning_tokens=r.reasoning_tokens,
    )
