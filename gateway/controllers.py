"""HTTP routes. Thin: validate (msgspec), call the service, return its result.

Each route declares the scope it needs in ``opt``; ``gateway.auth.scope_guard`` enforces it.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.params import JSONBody, PathParameter, QueryParameter

from gateway.audit import read_audit
from gateway.auth import Principal, generate_key, hash_key
from gateway.batch import BatchService
from gateway.coupons import CouponService
from gateway.errors import Conflict, NotFound
from gateway.health import readiness
from gateway.history import HistoryService
from gateway.money import fmt
from gateway.refunds import RefundService
from gateway.reservations import ReservationService
from gateway.schemas import (
    USER_ID_PATTERN,
    AuditPage,
    Balance,
    BatchDebitRequest,
    BatchResult,
    CommitRequest,
    CommitResult,
    Coupon,
    CouponCheck,
    CouponRequest,
    DebitRequest,
    DebitResult,
    GrantRequest,
    GrantResult,
    KeyCreated,
    KeyInfo,
    KeyRequest,
    PriceInfo,
    PriceList,
    PriceRequest,
    RedeemRequest,
    RedeemResult,
    RefundRequest,
    RefundResult,
    ReleaseResult,
    Reservation,
    ReserveRequest,
    ResetRequest,
    ResetResult,
    TierChange,
    TierInfo,
    TierList,
    TierRequest,
    TransactionsPage,
    UsageReport,
)
from gateway.service import CreditService
from persistence import api_keys
from persistence.history import GroupBy
from persistence.pricing import Price

BATCH_MAX_BODY = 1024 * 1024  # room for 1000 items; other routes keep the app's limit

UserIdQuery = Annotated[str, QueryParameter(min_length=1, max_length=255, pattern=USER_ID_PATTERN)]
UserIdPath = Annotated[str, PathParameter(min_length=1, max_length=255, pattern=USER_ID_PATTERN)]


AnyRequest = Request[Any, Any, Any]


def _actor(request: AnyRequest) -> str:
    """The name of the API key making this call (set by the scope guard), for the audit log."""
    principal: Principal = request.state.principal
    return principal.name


def _service(state: State) -> CreditService:
    service: CreditService = state.service
    return service


class CreditsController(Controller):
    path = "/api/v1"
    tags = ["credits"]

    @post("/credits/debit", opt={"scope": "debit"}, status_code=200)
    async def debit(self, data: JSONBody[DebitRequest], state: State) -> DebitResult:
        """Charge credits atomically (idempotent by request_id). 402 when the balance is short."""
        return await _service(state).debit(data)

    @post(
        "/credits/debit/batch",
        opt={"scope": "debit"},
        status_code=200,
        request_max_body_size=BATCH_MAX_BODY,
    )
    async def debit_batch(self, data: JSONBody[BatchDebitRequest], state: State) -> BatchResult:
        """Up to 1000 debits in one Redis round trip; each item answered in order, with its own
        status (200, 400, 402, 409, 503) and result or error."""
        batch: BatchService = state.batch
        return await batch.debit(data.debits)

    @get("/credits/balance", opt={"scope": "read"})
    async def balance(self, state: State, user_id: UserIdQuery) -> Balance:
        """The user's balance, from Redis; an unknown user is created with the default tier."""
        return await _service(state).balance(user_id)

    @post("/credits/grant", opt={"scope": "admin"}, status_code=200)
    async def grant(
        self, data: JSONBody[GrantRequest], state: State, request: AnyRequest
    ) -> GrantResult:
        """Add credits (purchase, bonus or adjustment), idempotent by request_id."""
        return await _service(state).grant(data, _actor(request))

    @post("/credits/refund", opt={"scope": "admin"}, status_code=200)
    async def refund(
        self, data: JSONBody[RefundRequest], state: State, request: AnyRequest
    ) -> RefundResult:
        """Return all or part of a debit (never more than it charged), idempotent."""
        refunds: RefundService = state.refunds
        return await refunds.refund(data, _actor(request))

    @put("/credits/{user_id:str}/tier", opt={"scope": "admin"})
    async def set_tier(
        self, user_id: UserIdPath, data: JSONBody[TierRequest], state: State, request: AnyRequest
    ) -> TierChange:
        """Move a user to a tier; the balance moves by the difference of the allocations."""
        return await _service(state).set_tier(user_id, data.tier, _actor(request))

    @post("/credits/{user_id:str}/reset", opt={"scope": "admin"}, status_code=200)
    async def reset(
        self, user_id: UserIdPath, data: JSONBody[ResetRequest], state: State, request: AnyRequest
    ) -> ResetResult:
        """Renew the user's period now: new allocation, spending back to 0 (idempotent)."""
        return await _service(state).reset(user_id, data.request_id, _actor(request))

    @get("/credits/{user_id:str}/transactions", opt={"scope": "read"})
    async def transactions(
        self,
        user_id: UserIdPath,
        state: State,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> TransactionsPage:
        """The user's ledger in PostgreSQL, newest first; pass next_cursor for the next page."""
        history: HistoryService = state.history
        return await history.transactions(user_id, limit, cursor)

    @get("/credits/{user_id:str}/usage", opt={"scope": "read"})
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
        history: HistoryService = state.history
        return await history.usage(user_id, start, end, group_by)

    @get("/tiers", opt={"scope": "read"})
    async def tiers(self, state: State) -> TierList:
        """The configured tiers and their monthly allocations."""
        table = _service(state).tiers
        return TierList(
            [
                TierInfo(
                    t.name,
                    fmt(t.allocation),
                    None if t.monthly_cap is None else fmt(t.monthly_cap),
                    t.name == table.default,
                    t.rollover,
                )
                for t in table.tiers.values()
            ]
        )


ReservationIdPath = Annotated[str, PathParameter(min_length=1, max_length=64)]


def _reservations(state: State) -> ReservationService:
    reservations: ReservationService = state.reservations
    return reservations


class ReservationsController(Controller):
    path = "/api/v1/credits/reservations"
    tags = ["reservations"]
    opt = {"scope": "debit"}

    @post("/", status_code=201)
    async def reserve(self, data: JSONBody[ReserveRequest], state: State) -> Reservation:
        """Hold credits until commit, release or expiry (ttl_seconds, default 300, max 3600)."""
        return await _reservations(state).reserve(data)

    @post("/{reservation_id:str}/commit", status_code=200)
    async def commit(
        self, reservation_id: ReservationIdPath, data: JSONBody[CommitRequest], state: State
    ) -> CommitResult:
        """Charge the actual cost and return the rest of the hold (idempotent)."""
        return await _reservations(state).commit(reservation_id, data)

    @delete("/{reservation_id:str}", status_code=200)
    async def release(self, reservation_id: ReservationIdPath, state: State) -> ReleaseResult:
        """Release the hold (idempotent); a hold that already expired answers status=expired."""
        return await _reservations(state).release(reservation_id)


class PricingController(Controller):
    path = "/api/v1/pricing"
    tags = ["pricing"]

    @get("/", opt={"scope": "read"})
    async def list_prices(self, state: State) -> PriceList:
        """Every model's price in credits per million input and output tokens."""
        prices = await _service(state).pricing.prices()
        return PriceList([_price_info(p) for p in prices.values()])

    @put("/{model:str}", opt={"scope": "admin"})
    async def set_price(
        self,
        model: Annotated[str, PathParameter(min_length=1, max_length=255)],
        data: JSONBody[PriceRequest],
        state: State,
        request: AnyRequest,
    ) -> PriceInfo:
        """Set a model's price (idempotent: PUT of the same price changes nothing)."""
        price = await _service(state).pricing.set(
            model, data.input_per_million, data.output_per_million, _actor(request)
        )
        return _price_info(price)


def _price_info(p: Price) -> PriceInfo:
    return PriceInfo(
        model=p.model,
        input_per_million=str(p.input_per_million),
        output_per_million=str(p.output_per_million),
        updated_at=p.updated_at.isoformat() if p.updated_at else None,
    )


class KeysController(Controller):
    path = "/api/v1/admin/keys"
    tags = ["admin"]
    opt = {"scope": "admin"}

    @post("/", status_code=201)
    async def create(
        self, data: JSONBody[KeyRequest], state: State, request: AnyRequest
    ) -> KeyCreated:
        """Create an API key. The key is shown once; only its hash is stored."""
        key = generate_key()
        rec = await api_keys.insert_key(
            state.pool, data.name, hash_key(key), list(data.scopes), _actor(request)
        )
        if rec is None:
            raise Conflict(f"an API key named {data.name!r} already exists")
        return KeyCreated(key=key, name=rec.name, scopes=list(rec.scopes))

    @get("/")
    async def list_keys(self, state: State) -> list[KeyInfo]:
        """Every key's name, scopes and dates (never the key)."""
        return [
            KeyInfo(
                k.name,
                list(k.scopes),
                k.created_at.isoformat() if k.created_at else None,
                k.revoked_at.isoformat() if k.revoked_at else None,
            )
            for k in await api_keys.list_keys(state.pool)
        ]

    @delete("/{name:str}", status_code=204)
    async def revoke(
        self, name: Annotated[str, PathParameter(max_length=100)], state: State, request: AnyRequest
    ) -> None:
        """Revoke a key: at once in this process, within auth_cache_ttl in the others."""
        if not await api_keys.revoke_key(state.pool, name, _actor(request)):
            raise NotFound(f"no active API key named {name!r}")
        state.authenticator.forget()


CodePath = Annotated[str, PathParameter(min_length=1, max_length=64)]


class CouponsController(Controller):
    path = "/api/v1/coupons"
    tags = ["coupons"]

    @post("/", opt={"scope": "admin"}, status_code=201)
    async def create(
        self, data: JSONBody[CouponRequest], state: State, request: AnyRequest
    ) -> Coupon:
        """Create a coupon worth `credits` (a bonus grant), optionally limited in uses and time."""
        return await _coupons(state).create(data, _actor(request))

    @get("/", opt={"scope": "admin"})
    async def list_coupons(
        self, state: State, limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100
    ) -> list[Coupon]:
        """Coupons, newest first."""
        return await _coupons(state).list(limit)

    @delete("/{code:str}", opt={"scope": "admin"}, status_code=200)
    async def deactivate(self, code: CodePath, state: State, request: AnyRequest) -> Coupon:
        """Deactivate a coupon: it can no longer be redeemed."""
        return await _coupons(state).deactivate(code, _actor(request))

    @get("/{code:str}", opt={"scope": "read"})
    async def check(self, code: CodePath, state: State) -> CouponCheck:
        """Whether a coupon can be redeemed now, and for how much."""
        return await _coupons(state).check(code)

    @post("/{code:str}/redeem", opt={"scope": "debit"}, status_code=200)
    async def redeem(
        self, code: CodePath, data: JSONBody[RedeemRequest], state: State
    ) -> RedeemResult:
        """Redeem for a user (once per user, idempotent by request_id): a bonus grant."""
        return await _coupons(state).redeem(code, data)


def _coupons(state: State) -> CouponService:
    coupons: CouponService = state.coupons
    return coupons


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["admin"]
    opt = {"scope": "admin"}

    @get("/")
    async def audit(
        self,
        state: State,
        user_id: Annotated[str | None, QueryParameter(max_length=255)] = None,
        action: Annotated[str | None, QueryParameter(max_length=50)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> AuditPage:
        """Admin actions newest first (grants, tier changes, resets, refunds, pricing, keys),
        with the acting key's name; filter by user_id and action, page with next_cursor."""
        return await read_audit(state.pool, user_id, action, limit, cursor)


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/live")
    async def live(self) -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @get("/ready")
    async def ready(self, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        """200 only when Redis and PostgreSQL answer and migrations are applied."""
        return await readiness(request.app.state)
