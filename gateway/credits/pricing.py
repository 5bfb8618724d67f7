"""Per-model pricing: cost = (input x input rate + cached input x cached rate + cache writes x
cache-write rate + (output - reasoning) x output rate + reasoning x reasoning rate) / 1e6, rates
in credits per million tokens (an unset cached or cache-write rate is the input rate, an unset
reasoning rate the output rate), exact, rounded half-up to 6 places once. Prices live in
PostgreSQL; each process keeps them in memory and reloads them every ``ttl`` seconds, so a price
change reaches every gateway process within that time (at once in the process that made it)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from gateway.base.errors import Unprocessable
from gateway.credits.money import MAX_MICRO, SCALE, fmt, to_micro
from gateway.credits.schemas import TOKEN_FIELDS, Priced
from persistence.pricing import Price, all_prices, upsert_price

MILLION = Decimal(1_000_000)
US, RS = "\x1f", "\x1e"  # between a charge's tier amounts, and a tier's name and amount


def cost_micro(price: Price, priced: Priced) -> int:
    return _round(cost(price, priced))


def cost(price: Price, priced: Priced) -> Decimal:
    """The exact cost in credits, not rounded."""
    inp, out = price.input_per_million, price.output_per_million
    reasoning = priced.reasoning_tokens or 0
    total = (
        (priced.input_tokens or 0) * inp
        + (priced.cached_input_tokens or 0) * _or(price.cached_input_per_million, inp)
        + (priced.cache_write_tokens or 0) * _or(price.cache_write_per_million, inp)
        + ((priced.output_tokens or 0) - reasoning) * out
        + reasoning * _or(price.reasoning_per_million, out)
    )
    return total / MILLION


def _round(credits: Decimal) -> int:
    return to_micro(credits.quantize(SCALE, rounding=ROUND_HALF_UP))


def by_tier(exact: Decimal, markups: Mapping[str, Decimal], sign: int) -> str:
    """A priced charge for the scripts when some tiers pay a markup: the model price's amount
    (micro, signed), then each such tier's (the exact cost times its multiplier, rounded once),
    as 'base<US>tier<RS>amount<US>...'; lib.lua for_tier picks the user's inside the script,
    so a tier change cannot slip between the price and the charge."""
    parts = [str(sign * _round(exact))]
    for name, m in markups.items():
        parts.append(f"{name}{RS}{sign * min(_round(exact * m), MAX_MICRO)}")
    return US.join(parts)


def _or(rate: Decimal | None, default: Decimal) -> Decimal:
    return default if rate is None else rate


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

    async def set(self, price: Price, actor: str) -> Price:
        price = await upsert_price(self._pool, price, actor)
        self._prices[price.model] = price
        return price

    async def price(self, priced: Priced) -> int:
        """The cost in micro-credits of a call, for a debit or commit sent without an amount."""
        return (await self.priced(priced, {}, 1))[0]

    async def priced(
        self, priced: Priced, markups: Mapping[str, Decimal], sign: int
    ) -> tuple[int, str | None]:
        """The call's cost in micro-credits and, while some tiers pay a markup, the charge by
        tier for the scripts (by_tier, signed; None without markups): one computation."""
        model = priced.model
        if model is None or all(getattr(priced, n) is None for n in TOKEN_FIELDS):
            raise Unprocessable(
                "amount is required unless model and input_tokens/output_tokens are given"
            )
        price = (await self.prices()).get(model)
        if price is None:
            raise Unprocessable(f"no price for model {model!r}; set one with PUT /api/v1/pricing")
        exact = cost(price, priced)
        micro = _round(exact)
        if micro > MAX_MICRO:
            raise Unprocessable(f"the priced cost exceeds the maximum amount {fmt(MAX_MICRO)}")
        return micro, by_tier(exact, markups, sign) if markups else None
