"""Domain errors raised by the service; the app maps each to one HTTP status."""

from __future__ import annotations

# What a client is told when a store fails (by the Litestar handlers and the fast path alike).
REDIS_DOWN = (
    "Redis is unreachable, did not answer in time, or is failing over or read-only. If the call "
    "reached Redis it may have been applied: retry with the same request_id (retries are "
    "idempotent)"
)
POSTGRES_DOWN = "PostgreSQL is unreachable; retry later"


class MeteringError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InsufficientCredits(MeteringError):
    status_code = 402

    def __init__(self, detail: str, balance: int, reason: str = "insufficient_credits") -> None:
        super().__init__(detail)
        self.balance = balance
        self.reason = reason


class IdempotencyConflict(MeteringError):
    status_code = 409


class Conflict(MeteringError):
    status_code = 409


class NotFound(MeteringError):
    status_code = 404


class Unprocessable(MeteringError):
    status_code = 422


class Unavailable(MeteringError):
    status_code = 503


class BadRequest(MeteringError):
    status_code = 400
