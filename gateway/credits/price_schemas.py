"""Model prices as PUT/GET /api/v1/pricing take and answer them (msgspec; the client SDK
keeps copies of the answers, checked by tests/test_client_package.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from msgspec import Meta, Struct

from gateway.credits.inputs import Amount
from gateway.credits.money import SCALE

PricePerMillion = Annotated[
    Amount, Meta(description="credits per million tokens, >= 0, at most 6 decimal places")
]


PRICE_FIELDS = (
    "input_per_million",
    "output_per_million",
    "cached_input_per_million",
    "cache_write_per_million",
    "reasoning_per_million",
)


class PriceRequest(Struct, forbid_unknown_fields=True):
    """Credits per million tokens. Unset: cached and cache-write tokens at the input rate,
    reasoning tokens at the output rate."""

    input_per_million: PricePerMillion
    output_per_million: PricePerMillion
    cached_input_per_million: PricePerMillion | None = None
    cache_write_per_million: PricePerMillion | None = None
    reasoning_per_million: PricePerMillion | None = None

    def __post_init__(self) -> None:
        for name in PRICE_FIELDS:
            value: Decimal | None = getattr(self, name)
            if value is None:
                continue
            if not value.is_finite() or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0")
            if value > Decimal("999999999999.999999") or value != value.quantize(SCALE):
                raise ValueError(f"{name} must have at most 6 decimal places and 12 digits")


class PriceInfo(Struct):
    model: str
    input_per_million: str
    output_per_million: str
    updated_at: str | None
    cached_input_per_million: str | None = None  # None: at the input rate
    cache_write_per_million: str | None = None  # None: at the input rate
    reasoning_per_million: str | None = None  # None: at the output rate


class PriceList(Struct):
    prices: list[PriceInfo]
