"""Admin routes: API keys and the audit log."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.params import JSONBody, PathParameter, QueryParameter

from gateway.api.auth import ANY_SCOPE, Principal, generate_key, hash_key
from gateway.api.routes.common import AnyRequest, actor, errors, services
from gateway.base.errors import Conflict, NotFound
from gateway.credits.audit import read_audit
from gateway.credits.schemas import (
    ACTION_PATTERN,
    KEY_NAME_PATTERN,
    USER_ID_PATTERN,
    AuditPage,
    KeyCreated,
    KeyInfo,
    KeyRequest,
    KeyScopes,
)
from persistence import api_keys


class KeysController(Controller):
    path = "/api/v1/admin/keys"
    tags = ["admin"]
    opt = {"scope": "admin"}

    @post("/", status_code=201, responses=errors(409))
    async def create(
        self, data: JSONBody[KeyRequest], state: State, request: AnyRequest
    ) -> KeyCreated:
        """Create an API key. The key is shown once; only its hash is stored."""
        key = generate_key()
        rec = await api_keys.insert_key(
            services(state).pool, data.name, hash_key(key), list(data.scopes), actor(request)
        )
        if rec is None:
            raise Conflict(f"an API key named {data.name!r} already exists")
        return KeyCreated(key=key, name=rec.name, scopes=list(rec.scopes))

    @get("/", responses=errors())
    async def list_keys(self, state: State) -> list[KeyInfo]:
        """Every key's name, scopes and dates (never the key)."""
        return [
            KeyInfo(
                k.name,
                list(k.scopes),
                k.created_at.isoformat() if k.created_at else None,
                k.revoked_at.isoformat() if k.revoked_at else None,
            )
            for k in await api_keys.list_keys(services(state).pool)
        ]

    @delete("/{name:str}", status_code=204, responses=errors(404))
    async def revoke(
        self,
        name: Annotated[str, PathParameter(max_length=100, pattern=KEY_NAME_PATTERN)],
        state: State,
        request: AnyRequest,
    ) -> None:
        """Revoke a key: at once in this process, within auth_cache_ttl in the others."""
        if not await api_keys.revoke_key(services(state).pool, name, actor(request)):
            raise NotFound(f"no active API key named {name!r}")
        services(state).authenticator.forget()


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["admin"]
    opt = {"scope": "admin"}

    @get("/", responses=errors())
    async def audit(
        self,
        state: State,
        user_id: Annotated[
            str | None, QueryParameter(max_length=255, pattern=USER_ID_PATTERN)
        ] = None,
        action: Annotated[str | None, QueryParameter(max_length=50, pattern=ACTION_PATTERN)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> AuditPage:
        """Admin actions newest first (grants, tier changes, resets, refunds, pricing, keys),
        with the acting key's name; filter by user_id and action, page with next_cursor."""
        return await read_audit(services(state).pool, user_id, action, limit, cursor)


class WhoAmIController(Controller):
    path = "/api/v1/whoami"
    tags = ["admin"]

    @get("/", opt={"scope": ANY_SCOPE}, responses=errors())
    async def whoami(self, request: AnyRequest) -> KeyScopes:
        """The calling key's name and scopes (any valid key): what a console or a tool may
        show it, without trying each route and meeting 403s."""
        principal: Principal = request.state.principal
        return KeyScopes(principal.name, sorted(principal.scopes))
