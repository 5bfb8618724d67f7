"""Health checks (no API key)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get

from gateway.api.health import readiness
from gateway.api.routes.common import services


class HealthController(Controller):
    path = "/health"
    tags = ["health"]
    opt = {"public": True}  # the one thing that answers without a key
    security = [{}]  # in the OpenAPI document: no key needed (an empty requirement)

    @get("/live")
    async def live(self) -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @get("/ready")
    async def ready(self, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        """200 when this gateway can serve debits (Redis up, a flusher alive, no migration
        pending): "ready", or "degraded" with reasons (PostgreSQL down, the flusher behind,
        dead letters); 503 "not ready" with reasons. The probe for a load balancer."""
        return await readiness(services(request.app.state))
