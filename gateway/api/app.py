"""The app factory: settings from the environment, pools opened and closed in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from gateway.api.auth import Authenticator, scope_guard
from gateway.api.console.routes import console_router
from gateway.api.docs import assets_router, openapi_config
from gateway.api.fastpath import DebitFastPath, too_large
from gateway.api.health import check_eviction, check_replication
from gateway.api.paths import decode_path_params
from gateway.api.routes import ROUTES
from gateway.api.routes.body import AmountSchema, MeteringRequest
from gateway.api.services import Services
from gateway.base.connect import REDIS_UNAVAILABLE
from gateway.base.errors import POSTGRES_DOWN, REDIS_DOWN, InsufficientCredits, MeteringError
from gateway.base.metrics import POSTGRES_ERRORS, REDIS_ERRORS
from gateway.base.settings import Settings, durability, settings_from_env
from gateway.credits.clock import Clock, system_clock
from gateway.credits.inputs import EMPTY_BODY, decode_amount, is_amount
from gateway.credits.messages import in_words
from gateway.credits.money import fmt
from gateway.credits.tiers import load_tiers
from gateway.flusher.background import (
    Background,
    make_flusher,
    make_service,
    redis_client,
    replica_acks,
)
from persistence.db import DB_ERRORS, open_pool

log = logging.getLogger("metering.app")


def _error(
    status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> Response[dict[str, Any]]:
    """Every error the gateway answers: JSON on every route (without a media type the
    framework would give it the route's: text/plain on /metrics)."""
    if status == 503:  # retry with the same request_id
        headers = {"Retry-After": "1", **(headers or {})}
    body = {"status_code": status, "detail": detail, **extra}
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """A bug, not the client's doing: logged with its trace, answered without details."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "Internal Server Error")


def metering_error(_: Request[Any, Any, Any], exc: MeteringError) -> Response[dict[str, Any]]:
    if isinstance(exc, InsufficientCredits):
        return _error(402, exc.detail, reason=exc.reason, credits_remaining=fmt(exc.balance))
    return _error(exc.status_code, exc.detail)


def invalid(_: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    """The framework's 400 for a refused body or parameter, each rule said in words."""
    items = exc.extra if isinstance(exc.extra, list) else []
    if any(isinstance(i, dict) and i.get("message") == "'data'" for i in items):
        return _error(400, EMPTY_BODY)  # no body at all: the framework names the missing kwarg
    extra = [
        {**item, "message": in_words(str(item["message"]))}
        if isinstance(item, dict) and "message" in item
        else item
        for item in items
    ]
    return _error(400, exc.detail, extra=extra) if extra else _error(400, exc.detail)


def refused_key(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    """401, 403 and 429 from the key check, with their headers (Retry-After)."""
    return _error(exc.status_code, exc.detail, headers=exc.headers)


def redis_down(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.error("redis error: %s", type(exc).__name__)
    REDIS_ERRORS.inc()
    return _error(503, REDIS_DOWN)


def postgres_down(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.error("postgres error: %s", type(exc).__name__)
    POSTGRES_ERRORS.inc()
    return _error(503, POSTGRES_DOWN)


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock) -> DebitFastPath:
    settings = settings if settings is not None else settings_from_env()
    tiers = load_tiers(settings.tiers_file)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        redis = redis_client(settings)
        await check_eviction(redis, settings.eviction_check)
        await check_replication(redis, durability(settings), settings.redis_wait_replicas)
        # connections are made on demand: a gateway started while PostgreSQL is down serves the
        # users Redis holds, and answers 503 for the rest until it is back
        pool = await open_pool(settings.database_url, min_size=0)
        acks = replica_acks(settings, redis)
        service = make_service(settings, redis, pool, tiers, clock, acks)
        flusher = make_flusher(settings, redis, pool, tiers, acks)
        auth = Authenticator(
            pool,
            settings.admin_key,
            settings.auth_cache_ttl,
            fail_limit=settings.auth_fail_limit,
            fail_window=settings.auth_fail_window,
        )
        app.state.services = Services.build(settings, service, flusher, auth)
        background = Background(settings, flusher, service)
        await background.start()
        try:
            yield
        finally:
            await background.stop()
            if acks is not None:
                await acks.aclose()
            await redis.aclose()
            await pool.close()

    app = Litestar(
        route_handlers=[*ROUTES, assets_router(), console_router()],
        guards=[scope_guard],
        lifespan=[lifespan],
        exception_handlers={
            MeteringError: metering_error,
            ValidationException: invalid,
            **dict.fromkeys(
                (NotAuthorizedException, PermissionDeniedException, TooManyRequestsException),
                refused_key,
            ),
            RequestEntityTooLarge: lambda _, __: _error(413, too_large(settings.max_body_bytes)),
            **dict.fromkeys(REDIS_UNAVAILABLE, redis_down),
            **dict.fromkeys(DB_ERRORS, postgres_down),
            HTTP_500_INTERNAL_SERVER_ERROR: internal_error,
        },
        openapi_config=openapi_config(),
        request_class=MeteringRequest,
        middleware=[decode_path_params],
        type_decoders=[(is_amount, decode_amount)],
        plugins=[AmountSchema()],
        request_max_body_size=settings.max_body_bytes,
        debug=False,
        logging_config=None,  # `metering serve` configures logging (gateway/base/logs.py)
    )
    return DebitFastPath(app, settings.max_body_bytes)
