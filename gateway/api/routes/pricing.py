"""Per-model prices."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from litestar import Controller, get, put
from litestar.datastructures import State
from litestar.params import JSONBody, PathParameter

from gateway.api.routes.common import AnyRequest, actor, errors, services
from gateway.credits.inputs import TEXT_PATTERN
from gateway.credits.price_schemas import PRICE_FIELDS, PriceInfo, PriceList, PriceRequest
from persistence.pricing import Price


class PricingController(Controller):
    path = "/api/v1/pricing"
    tags = ["pricing"]

    @get("/", opt={"scope": "read"}, responses=errors())
    async def list_prices(self, state: State) -> PriceList:
        """Every model's price in credits per million input and output tokens."""
        prices = await services(state).credits.pricing.prices()
        return PriceList([_price_info(p) for p in prices.values()])

    @put("/{model:str}", opt={"scope": "admin"}, responses=errors())
    async def set_price(
        self,
        model: Annotated[str, PathParameter(min_length=1, max_length=255, pattern=TEXT_PATTERN)],
        data: JSONBody[PriceRequest],
        state: State,
        request: AnyRequest,
    ) -> PriceInfo:
        """Set a model's price (idempotent: PUT of the same price changes nothing). Unset
        cached and cache-write rates are the input rate, an unset reasoning rate the output
        rate."""
        rates = {name: getattr(data, name) for name in PRICE_FIELDS}
        price = await services(state).credits.pricing.set(Price(model, **rates), actor(request))
        return _price_info(price)


def _price_info(p: Price) -> PriceInfo:
    def rate(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    return PriceInfo(
        model=p.model,
        input_per_million=str(p.input_per_million),
        output_per_million=str(p.output_per_million),
        updated_at=p.updated_at.isoformat() if p.updated_at else None,
        cached_input_per_million=rate(p.cached_input_per_million),
        cache_write_per_million=rate(p.cache_write_per_million),
        reasoning_per_million=rate(p.reasoning_per_million),
    )
