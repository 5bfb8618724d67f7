"""HTTP routes, one module per area. Thin: validate (msgspec), call a service, return its result.

Each route declares the scope it needs in ``opt``; ``gateway.auth.scope_guard`` enforces it.
"""

from __future__ import annotations

from gateway.routes.admin import AuditController, KeysController
from gateway.routes.coupons import CouponsController
from gateway.routes.credits import CreditsController
from gateway.routes.health import HealthController
from gateway.routes.metrics import MetricsController
from gateway.routes.ops import OpsController
from gateway.routes.pricing import PricingController
from gateway.routes.reservations import ReservationsController

ROUTES = [
    CreditsController,
    ReservationsController,
    PricingController,
    CouponsController,
    KeysController,
    AuditController,
    MetricsController,
    OpsController,
    HealthController,
]
