"""Per-model pricing: cost = (input_tokens * input_per_million + output_tokens *
output_per_million) / 1e6, exact, rounded half-up to 6 places. Prices live in PostgreSQL; each
process keeps them in memory and reloads them every ``ttl`` seconds, so a price change reaches
every gateway process within that time (at once in the process that made it)."""

from __future__ import annotations

import time
from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from gateway.base.errors import Unprocessable
from gateway.credits.money import MAX_MICRO, SCALE, fmt, to_micro
from persistence.pricing import Price, all_prices, upsert_price

MILLION = Decimal(1_000_000)


def cost_micro(price: Price, input_tokens: int, output_tokens: int) -> int:
    cost = input_tokens * price.input_per_million + output_tokens * price.output_per_million
    return to_micro((cost / MILLION).quantize(SCALE, rounding=ROUND_HALF_UP))


class PriceBook:
    def __init__(self, pool: asyncpg.Pool, ttl: float) -> None:
        self._pool = pool
        self._ttl = ttl
        self._prices: dict[str, Price] = {}
        self._loaded = float("-inf")

    async def prices(self) -> dict[str, Price]:
        if time.monotonic() - self._loaded > self._ttl:
            self._prices = {p.model: p for p in await all_prices(self._pool)}
            self._loaded = time.monotonic()
        return self._prices

    async def set(self, model: str, inp: Decimal, out: Decimal, actor: str) -> Price:
        price = await upsert_price(self._pool, model, inp, out, actor)
        self._prices[model] = price
        return price

    async def price(
        self, model: str | None, input_tokens: int | None, output_tokens: int | None
    ) -> int:
        """The cost in micro-credits of a call, for a debit or commit sent without an amount."""
        if model is None or (input_tokens is None and output_tokens is None):
            raise Unprocessable(
                "amount is required unless model and input_tokens/output_tokens are given"
            )
        price = (await self.prices()).get(model)
        if price is None:
            raise Unprocessable(f"no price for model {model!r}; set one with PUT /api/v1/pricing")
        micro = cost_micro(price, input_tokens or 0, output_tokens or 0)
        if micro > MAX_MICRO:
            raise Unprocessable(f"the priced cost exceeds the maximum amount {fmt(MAX_MICRO)}")
        return micro
