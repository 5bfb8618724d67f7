"""What every route module shares: the services, the caller's key name, path/query types."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request
from litestar.datastructures import State
from litestar.params import PathParameter, QueryParameter

from gateway.auth import Principal
from gateway.schemas import USER_ID_PATTERN
from gateway.services import Services

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
