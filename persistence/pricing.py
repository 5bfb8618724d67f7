"""model_pricing rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from persistence import queries
from persistence.db import Executor


@dataclass(frozen=True, slots=True)
class Price:
    """Credits per million tokens of each kind; None: cached and cache-write tokens at the input
    rate, reasoning tokens at the output rate."""

    model: str
    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None = None
    cache_write_per_million: Decimal | None = None
    reasoning_per_million: Decimal | None = None
    updated_at: datetime | None = None


async def upsert_price(conn: Executor, price: Price, actor: str) -> Price:
    rec = await conn.fetchrow(
        queries.PRICING_UPSERT,
        price.model,
        price.input_per_million,
        price.output_per_million,
        price.cached_input_per_million,
        price.cache_write_per_million,
        price.reasoning_per_million,
        actor,
    )
    assert rec is not None
    return Price(**dict(rec))


async def all_prices(conn: Executor) -> list[Price]:
    return [Price(**dict(r)) for r in await conn.fetch(queries.PRICING_ALL)]


async def import_prices(conn: Executor, prices: list[Price], actor: str, source: str) -> int:
    """Add the prices of models not priced yet (the others keep theirs); returns how many."""
    columns: list[list[object]] = [[] for _ in range(6)]
    for p in prices:
        for column, value in zip(columns, _row(p), strict=True):
            column.append(value)
    added = await conn.fetchval(queries.PRICING_IMPORT, *columns, actor, source)
    return int(added or 0)


def _row(p: Price) -> tuple[object, ...]:
    return (
        p.model,
        p.input_per_million,
        p.output_per_million,
        p.cached_input_per_million,
        p.cache_write_per_million,
        p.reasoning_per_million,
    )
