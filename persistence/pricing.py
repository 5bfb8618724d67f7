"""model_pricing rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from persistence import queries
from persistence.db import Executor


@dataclass(frozen=True, slots=True)
class Price:
    model: str
    input_per_million: Decimal
    output_per_million: Decimal
    updated_at: datetime | None = None


async def upsert_price(conn: Executor, model: str, inp: Decimal, out: Decimal, actor: str) -> Price:
    rec = await conn.fetchrow(queries.PRICING_UPSERT, model, inp, out, actor)
    assert rec is not None
    return Price(**dict(rec))


async def all_prices(conn: Executor) -> list[Price]:
    return [Price(**dict(r)) for r in await conn.fetch(queries.PRICING_ALL)]
