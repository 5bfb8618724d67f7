"""What every route module shares: the services, the caller's key name, path/query types."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.params import PathParameter, QueryParameter

from gateway.api.auth import Principal
from gateway.api.services import Services
from gateway.credits.schemas import USER_ID_PATTERN, PaymentRequired

AnyRequest = Request[Any, Any, Any]
UserIdQuery = Annotated[str, QueryParameter(min_length=1, max_length=255, pattern=USER_ID_PATTERN)]
UserIdPath = Annotated[str, PathParameter(min_length=1, max_length=255, pattern=USER_ID_PATTERN)]


def services(state: State) -> Services:
    found: Services = state.services
    return found


def actor(request: AnyRequest) -> str:
    """The name of the API key making this call (set by the scope guard), for the audit log."""
    principal: Principal = request.state.principal
    return principal.name


class ErrorBody(msgspec.Struct):
    status_code: int
    detail: str


_DESCRIBED = {
    401: "missing, invalid or revoked API key",
    402: "insufficient credits or monthly cap reached; nothing was charged",
    403: "the API key lacks the scope this route needs",
    404: "no such user, transaction, reservation, coupon or key",
    409: "request_id reused with a different body, or the resource is settled/taken",
    422: "well-formed but not acceptable (unknown tier or model, over a maximum, ...)",
    503: "Redis or PostgreSQL unavailable, or the flush backlog is full; retry with the same "
    "request_id",
}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error answers of a route (401, 403 and 503 on every route)."""
    spec: dict[int, ResponseSpec] = {}
    for code in sorted({401, 403, 503, *codes}):
        body = PaymentRequired if code == 402 else ErrorBody
        spec[code] = ResponseSpec(data_container=body, description=_DESCRIBED[code])
    return spec
