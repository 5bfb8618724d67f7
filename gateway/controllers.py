"""HTTP routes. Thin: validate (msgspec), call the service, return its result."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, post, put
from litestar.datastructures import State
from litestar.params import Parameter

from gateway.errors import Conflict, NotFound
from gateway.schemas import (
    Balance,
    DebitRequest,
    DebitResult,
    GrantRequest,
    GrantResult,
    KeyCreated,
    KeyInfo,
    KeyRequest,
    TierChange,
    TierInfo,
    TierList,
    TierRequest,
    UserId,
)
from gateway.money import fmt
from gateway.auth import generate_key, hash_key
from persistence import api_keys

UserIdQuery = Parameter(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")


class CreditsController(Controller):
    path = "/api/v1"
    tags = ["credits"]

    @post("/credits/debit", opt={"scope": "debit"}, status_code=200)
    async def debit(self, data: DebitRequest, state: State) -> DebitResult:
        """Charge credits atomically (idempotent by request_id). 402 when the balance is short."""
        return await state.service.debit(data)  # type: ignore[no-any-return]

    @get("/credits/balance", opt={"scope": "read"})
    async def balance(self, state: State, user_id: UserId = UserIdQuery) -> Balance:
        """The user's balance, from Redis; an unknown user is created with the default tier."""
        return await state.service.balance(user_id)  # type: ignore[no-any-return]

    @post("/credits/grant", opt={"scope": "admin"}, status_code=200)
    async def grant(self, data: GrantRequest, state: State) -> GrantResult:
        """Add credits (purchase, bonus or adjustment), idempotent by request_id."""
        return await state.service.grant(data)  # type: ignore[no-any-return]

    @put("/credits/{user_id:str}/tier", opt={"scope": "admin"})
    async def set_tier(self, user_id: str, data: TierRequest, state: State) -> TierChange:
        """Move a user to a tier; the balance moves by the difference of the allocations."""
        return await state.service.set_tier(_user_path(user_id), data.tier)  # type: ignore[no-any-return]

    @get("/tiers", opt={"scope": "read"})
    async def tiers(self, state: State) -> TierList:
        table = state.service.tiers
        return TierList([
            TierInfo(t.name, fmt(t.allocation), None if t.monthly_cap is None else fmt(t.monthly_cap),
                     t.name == table.default)
            for t in table.tiers.values()
        ])


def _user_path(user_id: str) -> str:
    from gateway.errors import Unprocessable

    if not (1 <= len(user_id) <= 255) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in user_id):
        raise Unprocessable("user_id must be 1 to 255 characters without control characters")
    return user_id


class KeysController(Controller):
    path = "/api/v1/admin/keys"
    tags = ["admin"]
    opt = {"scope": "admin"}

    @post("/", status_code=201)
    async def create(self, data: KeyRequest, state: State) -> KeyCreated:
        """Create an API key. The key is shown once; only its hash is stored."""
        key = generate_key()
        rec = await api_keys.insert_key(state.pool, data.name, hash_key(key), list(data.scopes))
        if rec is None:
            raise Conflict(f"an API key named {data.name!r} already exists")
        return KeyCreated(key=key, name=rec.name, scopes=list(rec.scopes))

    @get("/")
    async def list_keys(self, state: State) -> list[KeyInfo]:
        return [
            KeyInfo(k.name, list(k.scopes), k.created_at.isoformat() if k.created_at else None,
                    k.revoked_at.isoformat() if k.revoked_at else None)
            for k in await api_keys.list_keys(state.pool)
        ]

    @delete("/{name:str}", status_code=204)
    async def revoke(self, name: str, state: State) -> None:
        if not await api_keys.revoke_key(state.pool, name):
            raise NotFound(f"no active API key named {name!r}")
        state.authenticator.forget()


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/live")
    async def live(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready")
    async def ready(self, request: Request[Any, Any, Any]) -> Any:
        from gateway.health import readiness

        return await readiness(request.app.state)
