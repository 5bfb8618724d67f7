"""Credit routes: debit (single and batch), balance, grant, refund, tier, reset, history."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, get, post, put
from litestar.datastructures import State
from litestar.params import JSONBody, QueryParameter

from gateway.api.fastpath import BATCH_MAX_BODY
from gateway.api.routes.common import AnyRequest, UserIdPath, UserIdQuery, actor, errors, services
from gateway.credits.grant_schemas import GrantList
from gateway.credits.money import fmt
from gateway.credits.schemas import (
    Balance,
    BatchDebitRequest,
    BatchResult,
    DebitRequest,
    DebitResult,
    GrantRequest,
    GrantResult,
    RefundRequest,
    RefundResult,
    ResetRequest,
    ResetResult,
    TierChange,
    TierInfo,
    TierList,
    TierRequest,
    TransactionsPage,
    UsageReport,
)
from persistence.history import GroupBy


class CreditsController(Controller):
    path = "/api/v1"
    tags = ["credits"]

    @post(
        "/credits/debit", opt={"scope": "debit"}, status_code=200, responses=errors(402, 409, 422)
    )
    async def debit(self, data: JSONBody[DebitRequest], state: State) -> DebitResult:
        """Charge credits atomically (idempotent by request_id). 402 when the balance is short."""
        return await services(state).credits.debit(data)

    @post(
        "/credits/debit/batch",
        opt={"scope": "debit"},
        status_code=200,
        request_max_body_size=BATCH_MAX_BODY,
        responses=errors(),
    )
    async def debit_batch(self, data: JSONBody[BatchDebitRequest], state: State) -> BatchResult:
        """Up to 1000 debits in one Redis round trip; each item answered in order, with its own
        status (200, 400, 402, 409, 503) and result or error."""
        return await services(state).batch.debit(data.debits)

    @get("/credits/balance", opt={"scope": "read"}, responses=errors(422))
    async def balance(self, state: State, user_id: UserIdQuery) -> Balance:
        """The user's balance, from Redis; an unknown user is created with the default tier."""
        return await services(state).credits.balance(user_id)

    @post("/credits/grant", opt={"scope": "admin"}, status_code=200, responses=errors(409, 422))
    async def grant(
        self, data: JSONBody[GrantRequest], state: State, request: AnyRequest
    ) -> GrantResult:
        """Add credits (purchase, bonus or adjustment), idempotent by request_id."""
        return await services(state).credits.grant(data, actor(request))

    @post(
        "/credits/refund", opt={"scope": "admin"}, status_code=200, responses=errors(404, 409, 422)
    )
    async def refund(
        self, data: JSONBody[RefundRequest], state: State, request: AnyRequest
    ) -> RefundResult:
        """Return all or part of a debit (never more than it charged), idempotent."""
        return await services(state).refunds.refund(data, actor(request))

    @put("/credits/{user_id:str}/tier", opt={"scope": "admin"}, responses=errors(422))
    async def set_tier(
        self, user_id: UserIdPath, data: JSONBody[TierRequest], state: State, request: AnyRequest
    ) -> TierChange:
        """Move a user to a tier; the balance moves by the difference of the allocations."""
        return await services(state).credits.set_tier(user_id, data.tier, actor(request))

    @post(
        "/credits/{user_id:str}/reset",
        opt={"scope": "admin"},
        status_code=200,
        responses=errors(409),
    )
    async def reset(
        self, user_id: UserIdPath, data: JSONBody[ResetRequest], state: State, request: AnyRequest
    ) -> ResetResult:
        """Renew the user's period now: new allocation, spending back to 0 (idempotent)."""
        return await services(state).credits.reset(user_id, data.request_id, actor(request))

    @get("/credits/{user_id:str}/transactions", opt={"scope": "read"}, responses=errors(404))
    async def transactions(
        self,
        user_id: UserIdPath,
        state: State,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> TransactionsPage:
        """The user's ledger in PostgreSQL, newest first; pass next_cursor for the next page."""
        return await services(state).history.transactions(user_id, limit, cursor)

    @get("/credits/{user_id:str}/grants", opt={"scope": "read"}, responses=errors(404))
    async def grants(
        self,
        user_id: UserIdPath,
        state: State,
        include: Annotated[Literal["open", "closed"], QueryParameter()] = "open",
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> GrantList:
        """The user's credit blocks: the open ones in spending order (from Redis), and with
        include=closed also up to `limit` spent or expired ones, newest first."""
        return await services(state).grants.grants(user_id, include == "closed", limit)

    @get("/credits/{user_id:str}/usage", opt={"scope": "read"}, responses=errors(404))
    async def usage(
        self,
        user_id: UserIdPath,
        state: State,
        start: Annotated[str | None, QueryParameter(name="from", max_length=40)] = None,
        end: Annotated[str | None, QueryParameter(name="to", max_length=40)] = None,
        group_by: Annotated[GroupBy, QueryParameter()] = "model",
    ) -> UsageReport:
        """Debits in [from, to) (default: the current period), grouped by model, service
        (metadata.service) or day."""
        return await services(state).history.usage(user_id, start, end, group_by)

    @get("/tiers", opt={"scope": "read"}, responses=errors())
    async def tiers(self, state: State) -> TierList:
        """The configured tiers: monthly allocations, caps, rollover and price multipliers."""
        table = services(state).credits.tiers
        return TierList(
            [
                TierInfo(
                    t.name,
                    fmt(t.allocation),
                    None if t.monthly_cap is None else fmt(t.monthly_cap),
                    t.name == table.default,
                    t.rollover,
                    None if t.max_rollover is None else fmt(t.max_rollover),
                    str(t.price_multiplier),
                )
                for t in table.tiers.values()
            ]
        )
