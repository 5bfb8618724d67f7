"""Ops counters: what `metering top` shows (admin scope)."""

from __future__ import annotations

import time
from typing import Any

from litestar import Controller, get
from litestar.datastructures import State

from gateway.api.health import flusher_state
from gateway.api.routes.common import errors, services
from gateway.base.metrics import debit_counts, reservation_counts
from gateway.credits.money import fmt, to_micro
from persistence.users import top_spenders


class OpsController(Controller):
    path = "/api/v1/ops"
    tags = ["ops"]
    opt = {"scope": "admin"}

    @get("/counters", responses=errors())
    async def counters(self, state: State) -> dict[str, Any]:
        """Debits by outcome and reservation calls by operation/outcome since this gateway
        started (all its workers), the flusher's backlog
        per shard and lag (from Redis), and the period's top spenders (from PostgreSQL)."""
        s = services(state)
        status, per_shard = await flusher_state(s)
        spenders = await top_spenders(s.pool, 10)
        return {
            "at": time.time(),
            "debits": debit_counts(),
            "reservations": reservation_counts(),
            "flusher": {**status, "backlog_per_shard": per_shard},
            "top_spenders": [
                {
                    "user_id": r.user_id,
                    "tier": r.tier,
                    "period_spent": fmt(to_micro(r.period_spent)),
                    "credits_remaining": fmt(to_micro(r.credits_remaining)),
                }
                for r in spenders
            ],
        }
