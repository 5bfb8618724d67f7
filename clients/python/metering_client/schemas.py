"""The gateway's answers as this SDK reads them (msgspec structs). The SDK keeps its own copies
so it installs without the server; fields the server adds later are ignored, and the server's
test suite checks these against the server's own (tests/test_client_package.py)."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct


class DebitResult(Struct):
    transaction_id: str
    user_id: str
    charged: str
    credits_remaining: str
    replayed: bool


class Expiring(Struct):
    amount: str
    at: str


class Balance(Struct):
    user_id: str
    tier: str
    credits_remaining: str
    credits_allocated: str
    monthly_cap: str | None
    last_reset: str
    period_spent: str
    credits_held: str
    expiring: Expiring | None = None


class Reservation(Struct):
    reservation_id: str
    user_id: str
    held: str
    credits_remaining: str
    expires_at: str | None
    replayed: bool


class CommitResult(Struct):
    reservation_id: str
    transaction_id: str
    user_id: str
    charged: str
    released: str
    credits_remaining: str
    replayed: bool


class ReleaseResult(Struct):
    reservation_id: str
    user_id: str
    status: Literal["released", "expired"]
    released: str
    credits_remaining: str
    replayed: bool


class PriceInfo(Struct):
    model: str
    input_per_million: str
    output_per_million: str
    updated_at: str | None
    cached_input_per_million: str | None = None  # None: at the input rate
    cache_write_per_million: str | None = None  # None: at the input rate
    reasoning_per_million: str | None = None  # None: at the output rate


class PriceList(Struct):
    prices: list[PriceInfo]


class Grant(Struct):
    id: str
    kind: str
    amount: str
    remaining: str
    priority: int
    expires_at: str | None
    created_at: str
    source_transaction: str | None
    status: Literal["open", "closed"]
    closed_at: str | None = None


class GrantList(Struct):
    user_id: str
    grants: list[Grant]
