"""HTTP routes, one module per area. Thin: validate (msgspec), call a service, return its result.

Each route declares the scope it needs in ``opt``; ``gateway.api.auth.scope_guard`` enforces it.
"""

from __future__ import annotations

from gateway.api.routes.admin import AuditController, KeysController, WhoAmIController
from gateway.api.routes.coupons import CouponsController
from gateway.api.routes.credits import CreditsController
from gateway.api.routes.health import HealthController
from gateway.api.routes.metrics import MetricsController
from gateway.api.routes.ops import OpsController
from gateway.api.routes.pricing import PricingController
from gateway.api.routes.reservations import ReservationsController

ROUTES = [
    CreditsController,
    ReservationsController,
    PricingController,
    CouponsController,
    KeysController,
    WhoAmIController,
    AuditController,
    MetricsController,
    OpsController,
    HealthController,
]
