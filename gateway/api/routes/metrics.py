"""Prometheus metrics (needs a key with the read scope: a scraper sends it as a bearer token)."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.datastructures import State

from gateway.api.health import flusher_state
from gateway.api.routes.common import errors, services
from gateway.base.metrics import PROMETHEUS_TEXT, RedisState, render


class MetricsController(Controller):
    path = "/metrics"
    tags = ["ops"]

    @get("/", opt={"scope": "read"}, media_type=PROMETHEUS_TEXT, responses=errors())
    async def metrics(self, state: State) -> Response[bytes]:
        """Debits by outcome, debit latency, hydrations, flushes, errors, and from Redis the
        backlog per shard and the flush lag, in the Prometheus text format."""
        try:
            status, per_shard = await flusher_state(services(state))
            ceiling = services(state).settings.max_backlog
            extra: RedisState | None = RedisState(status, per_shard, ceiling)
        except Exception:  # Redis down: the process counters still answer
            extra = None
        return Response(render(extra), media_type=PROMETHEUS_TEXT)
