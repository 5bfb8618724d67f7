"""Reading the audit log (writes happen with each admin action, see persistence)."""

from __future__ import annotations

import asyncpg
import msgspec

from gateway.credits.cursors import decode_cursor, encode_cursor
from gateway.credits.money import fmt, to_micro
from gateway.credits.schemas import AuditEntry, AuditPage
from persistence.audit import audit_page


async def read_audit(
    pool: asyncpg.Pool, user_id: str | None, action: str | None, limit: int, cursor: str | None
) -> AuditPage:
    rows = await audit_page(pool, user_id, action, decode_cursor(cursor), limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(
        entries=[
            AuditEntry(
                id=str(r.id),
                at=r.at.isoformat(),
                actor=r.actor,
                action=r.action,
                user_id=r.user_id,
                target=r.target,
                amount=None if r.amount is None else fmt(to_micro(r.amount)),
                request_id=r.request_id,
                details=msgspec.json.decode(r.details) if r.details else None,
            )
            for r in rows
        ],
        next_cursor=encode_cursor(rows[-1].at, rows[-1].id) if more else None,
    )
