"""Per-model prices."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, put
from litestar.datastructures import State
from litestar.params import JSONBody, PathParameter

from gateway.api.routes.common import AnyRequest, actor, errors, services
from gateway.credits.inputs import TEXT_PATTERN
from gateway.credits.schemas import PriceInfo, PriceList, PriceRequest
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
        """Set a model's price (idempotent: PUT of the same price changes nothing)."""
        price = await services(state).credits.pricing.set(
            model, data.input_per_million, data.output_per_million, actor(request)
        )
        return _price_info(price)


def _price_info(p: Price) -> PriceInfo:
    return PriceInfo(
        model=p.model,
        input_per_million=str(p.input_per_million),
        output_per_million=str(p.output_per_million),
        updated_at=p.updated_at.isoformat() if p.updated_at else None,
    )
