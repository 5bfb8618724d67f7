"""Reservations: hold, commit the actual cost, release."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, post
from litestar.datastructures import State
from litestar.params import JSONBody, PathParameter

from gateway.api.routes.common import errors, services
from gateway.credits.schemas import (
    RESERVATION_ID_PATTERN,
    CommitRequest,
    CommitResult,
    ExtendRequest,
    ReleaseResult,
    Reservation,
    ReserveRequest,
)

ReservationIdPath = Annotated[
    str,
    PathParameter(
        max_length=64, pattern=RESERVATION_ID_PATTERN, description="an id reserve returned"
    ),
]


class ReservationsController(Controller):
    path = "/api/v1/credits/reservations"
    tags = ["reservations"]
    opt = {"scope": "debit"}

    @post("/", status_code=201, responses=errors(402, 409))
    async def reserve(self, data: JSONBody[ReserveRequest], state: State) -> Reservation:
        """Hold credits until commit, release or expiry (ttl_seconds, default 300, max 3600)."""
        return await services(state).reservations.reserve(data)

    @post("/{reservation_id:str}/commit", status_code=200, responses=errors(402, 404, 409, 422))
    async def commit(
        self, reservation_id: ReservationIdPath, data: JSONBody[CommitRequest], state: State
    ) -> CommitResult:
        """Charge the actual cost and return the rest of the hold (idempotent)."""
        return await services(state).reservations.commit(reservation_id, data)

    @post("/{reservation_id:str}/extend", status_code=200, responses=errors(404, 409))
    async def extend(
        self, reservation_id: ReservationIdPath, data: JSONBody[ExtendRequest], state: State
    ) -> Reservation:
        """Keep the hold at least ttl_seconds (max 3600) from now, for a call that outlives it
        (a long stream); never shortens it, so repeating it is safe. 409 once it has expired,
        been committed or released."""
        return await services(state).reservations.extend(reservation_id, data)

    @delete("/{reservation_id:str}", status_code=200, responses=errors(404, 409))
    async def release(self, reservation_id: ReservationIdPath, state: State) -> ReleaseResult:
        """Release the hold (idempotent); a hold that already expired answers status=expired."""
        return await services(state).reservations.release(reservation_id)
