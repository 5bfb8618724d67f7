"""The audit log: written with each admin action, read newest first in cursor pages."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from persistence import queries
from persistence.db import Executor


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: uuid.UUID
    at: datetime
    actor: str
    action: str
    user_id: str | None
    target: str | None
    amount: Decimal | None
    request_id: str | None
    details: str | None


async def audit_page(
    conn: Executor,
    user_id: str | None,
    action: str | None,
    before: tuple[datetime, uuid.UUID],
    limit: int,
) -> list[AuditRow]:
    rows = await conn.fetch(queries.AUDIT_PAGE, user_id, action, before[0], before[1], limit)
    return [AuditRow(**dict(r)) for r in rows]
