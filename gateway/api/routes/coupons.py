"""Coupons."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.params import JSONBody, PathParameter, QueryParameter

from gateway.api.routes.common import AnyRequest, actor, errors, services
from gateway.credits.coupon_schemas import (
    COUPON_CODE_PATTERN,
    Coupon,
    CouponCheck,
    CouponRequest,
    RedeemRequest,
    RedeemResult,
)

CodePath = Annotated[str, PathParameter(min_length=1, max_length=64, pattern=COUPON_CODE_PATTERN)]


class CouponsController(Controller):
    path = "/api/v1/coupons"
    tags = ["coupons"]

    @post("/", opt={"scope": "admin"}, status_code=201, responses=errors(409))
    async def create(
        self, data: JSONBody[CouponRequest], state: State, request: AnyRequest
    ) -> Coupon:
        """Create a coupon worth `credits` (a bonus grant), optionally limited in uses and time."""
        return await services(state).coupons.create(data, actor(request))

    @get("/", opt={"scope": "admin"}, responses=errors())
    async def list_coupons(
        self, state: State, limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100
    ) -> list[Coupon]:
        """Coupons, newest first."""
        return await services(state).coupons.list(limit)

    @delete("/{code:str}", opt={"scope": "admin"}, status_code=200, responses=errors(404))
    async def deactivate(self, code: CodePath, state: State, request: AnyRequest) -> Coupon:
        """Deactivate a coupon: it can no longer be redeemed."""
        return await services(state).coupons.deactivate(code, actor(request))

    @get("/{code:str}", opt={"scope": "read"}, responses=errors(404))
    async def check(self, code: CodePath, state: State) -> CouponCheck:
        """Whether a coupon can be redeemed now, and for how much."""
        return await services(state).coupons.check(code)

    @post(
        "/{code:str}/redeem",
        opt={"scope": "debit"},
        status_code=200,
        responses=errors(404, 409, 422),
    )
    async def redeem(
        self, code: CodePath, data: JSONBody[RedeemRequest], state: State
    ) -> RedeemResult:
        """Redeem for a user (once per user, idempotent by request_id): a bonus grant."""
        return await services(state).coupons.redeem(code, data)
