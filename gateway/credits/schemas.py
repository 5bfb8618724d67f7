"""Request and response bodies (msgspec). Amounts travel as decimal strings with 6 places."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from gateway.credits.cursors import TIME_RANGE, in_range
from gateway.credits.inputs import NAME_PATTERN, TEXT_PATTERN, Amount, check_metadata
from gateway.credits.money import parse_amount

USER_ID_PATTERN = NAME_PATTERN
REQUEST_ID_PATTERN = r"^[\x20-\x7e]+\Z"
NO_NUL_PATTERN = r"^[^\x00]*\Z"
UserId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=255,
        pattern=USER_ID_PATTERN,
        description="1 to 255 characters: no control, invisible or direction-changing characters, "
        "no white space at either end",
    ),
]
RequestId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=REQUEST_ID_PATTERN,
        description="1 to 128 printable ASCII characters, unique per user",
    ),
]
Tokens = Annotated[int, Meta(ge=0, le=10**15)]
# Text that reaches PostgreSQL or a log may hold no control characters (PostgreSQL refuses NUL;
# a newline would forge a log line): every such field is checked here, at the door.
Model = Annotated[str, Meta(min_length=1, max_length=255, pattern=TEXT_PATTERN)]
AmountIn = Annotated[
    Amount,
    Meta(
        description='decimal string ("12.50") or number, > 0, at most 6 decimal places, '
        "<= 999999.999999; no exponent"
    ),
]

RESERVED_REQUEST_PREFIX = "sys:"
KEY_NAME_PATTERN = r"^[\x21-\x7e]+\Z"
RESERVATION_ID_PATTERN = r"^rv[0-9]{1,5}_[0-9a-f]{32}\Z"
ACTION_PATTERN = r"^[a-z][a-z_.]*\Z"  # an audit log action, e.g. grant.purchase


def check_request_id(request_id: str) -> None:
    if request_id.startswith(RESERVED_REQUEST_PREFIX):
        raise ValueError(f"request_id may not start with {RESERVED_REQUEST_PREFIX!r} (reserved)")


def _check_priced(priced: Priced) -> None:
    if priced.amount is not None:
        parse_amount(priced.amount)
    elif priced.model is None or all(getattr(priced, n) is None for n in TOKEN_FIELDS):
        raise ValueError(
            "amount is required unless model and input_tokens/output_tokens are given "
            "(the gateway then prices the call)"
        )
    if (priced.reasoning_tokens or 0) > (priced.output_tokens or 0):
        raise ValueError(
            "reasoning_tokens must be at most output_tokens (output_tokens includes them)"
        )


# a priced call's token counts, as the ledger records them
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


class Priced(Struct, kw_only=True, forbid_unknown_fields=True):
    """A charge: an amount, or a model and token counts for the gateway to price. input_tokens
    counts only uncached input that wrote no cache; cached_input_tokens the input read from the
    provider's cache, cache_write_tokens the input written to it; output_tokens includes
    reasoning_tokens (as OpenAI reports them). Cost = (input x input rate + cached x cached rate
    + cache write x cache-write rate + (output - reasoning) x output rate + reasoning x reasoning
    rate) / 1,000,000, rounded half-up to 6 places once."""

    amount: AmountIn | None = None  # priced from model and tokens when absent
    model: Model | None = None
    input_tokens: Tokens | None = None
    output_tokens: Tokens | None = None
    cached_input_tokens: Tokens | None = None
    cache_write_tokens: Tokens | None = None
    reasoning_tokens: Tokens | None = None
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_priced(self)
        if self.metadata is not None:
            check_metadata(self.metadata)


class DebitRequest(Priced, kw_only=True, forbid_unknown_fields=True):
    user_id: UserId
    request_id: RequestId

    def __post_init__(self) -> None:
        super().__post_init__()
        check_request_id(self.request_id)


class BatchDebitRequest(Struct, forbid_unknown_fields=True):
    debits: Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=1000)]


class BatchItem(Struct, omit_defaults=True):
    index: int
    status: int
    result: DebitResult | None = None
    error: dict[str, str] | None = None


class BatchResult(Struct):
    succeeded: int
    failed: int
    results: list[BatchItem]


def check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise ValueError("expires_at needs a time zone (e.g. 2026-12-31T23:59:59Z)")
        if in_range(expires_at) is None:
            raise ValueError(f"expires_at must be {TIME_RANGE}")


class GrantRequest(Struct, forbid_unknown_fields=True):
    """A grant opens a credit block of its kind (docs/credit-blocks.md): it never expires unless
    expires_at (RFC 3339, in the future) is given, and is spent in the order of its priority
    (0-100, lower first; by default allocation 10, bonus 20, adjustment 25, purchase 30)."""

    user_id: UserId
    amount: AmountIn
    request_id: RequestId
    kind: Literal["purchase", "bonus", "adjustment"] = "purchase"
    reason: Annotated[str, Meta(max_length=1000, pattern=NO_NUL_PATTERN)] | None = None
    expires_at: datetime | None = None
    priority: Annotated[int, Meta(ge=0, le=100)] | None = None

    def __post_init__(self) -> None:
        parse_amount(self.amount)
        check_request_id(self.request_id)
        check_expiry(self.expires_at)


class ResetRequest(Struct, forbid_unknown_fields=True):
    request_id: RequestId

    def __post_init__(self) -> None:
        check_request_id(self.request_id)


class ResetResult(Struct):
    transaction_id: str
    user_id: str
    adjustment: str
    credits_remaining: str
    replayed: bool


class RefundRequest(Struct, forbid_unknown_fields=True):
    user_id: UserId
    transaction_id: uuid.UUID
    request_id: RequestId
    amount: AmountIn | None = None  # all that is left of the debit when absent

    def __post_init__(self) -> None:
        if self.amount is not None:
            parse_amount(self.amount)
        check_request_id(self.request_id)


class RefundResult(Struct):
    transaction_id: str
    user_id: str
    refund_of: str
    refunded: str
    credits_remaining: str
    replayed: bool
    # the part of the refund returned to blocks that had expired since the debit: it expired
    # again at once (an 'expiry' entry), so the balance grew by refunded - expired
    expired: str = "0.000000"


class ReserveRequest(Struct, forbid_unknown_fields=True):
    user_id: UserId
    amount: AmountIn
    request_id: RequestId
    ttl_seconds: Annotated[int, Meta(ge=1, le=3600)] = 300

    def __post_init__(self) -> None:
        parse_amount(self.amount)
        check_request_id(self.request_id)


class ExtendRequest(Struct, forbid_unknown_fields=True):
    ttl_seconds: Annotated[int, Meta(ge=1, le=3600)]  # the hold lasts at least this from now


class CommitRequest(Priced, kw_only=True, forbid_unknown_fields=True):
    """The actual cost of a reserved call."""


class Reservation(Struct):
    reservation_id: str
    user_id: str
    held: str
    credits_remaining: str
    # on Redis's clock; None only for a replay that came after the settled record was dropped
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


class Transaction(Struct):
    transaction_id: str
    type: str
    amount: str  # signed: debits are negative
    balance_after: str
    request_id: str
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    metadata: dict[str, Any] | None
    refund_of: str | None
    created_at: str
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None


class TransactionsPage(Struct):
    user_id: str
    transactions: list[Transaction]
    next_cursor: str | None
    unflushed_events: int  # this user's changes in Redis not yet in the ledger


class UsageGroup(Struct):
    key: str | None  # the model, service or day; null: the debits that named no model/service
    requests: int
    credits: str
    input_tokens: int
    output_tokens: int


class UsageReport(Struct):
    user_id: str
    start: str
    end: str
    group_by: str
    groups: list[UsageGroup]
    total_requests: int
    total_credits: str
    unflushed_events: int


class AuditEntry(Struct):
    id: str
    at: str
    actor: str
    action: str
    user_id: str | None
    target: str | None
    amount: str | None
    request_id: str | None
    details: dict[str, Any] | None


class AuditPage(Struct):
    entries: list[AuditEntry]
    next_cursor: str | None


class TierRequest(Struct, forbid_unknown_fields=True):
    tier: Annotated[str, Meta(min_length=1, max_length=50)]


class KeyScopes(Struct):
    name: str  # the key's name ("bootstrap-admin" for METERING_ADMIN_KEY)
    scopes: list[str]


class KeyRequest(Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=100, pattern=KEY_NAME_PATTERN)]
    scopes: Annotated[list[Literal["debit", "read", "admin"]], Meta(min_length=1)]


class DebitResult(Struct):
    transaction_id: str
    user_id: str
    charged: str
    credits_remaining: str
    replayed: bool


class GrantResult(Struct):
    transaction_id: str
    user_id: str
    granted: str
    credits_remaining: str
    replayed: bool


class Balance(Struct):
    user_id: str
    tier: str
    credits_remaining: str
    credits_allocated: str
    monthly_cap: str | None
    last_reset: str
    period_spent: str
    credits_held: str
    expiring: Expiring | None = None  # the next credits to expire, if any


class Expiring(Struct):
    amount: str
    at: str


class TierChange(Struct):
    user_id: str
    tier: str
    credits_allocated: str
    credits_remaining: str
    monthly_cap: str | None
    adjustment: str
    transaction_id: str | None


class TierInfo(Struct):
    name: str
    monthly_allocation: str
    monthly_cap: str | None
    default: bool
    rollover: bool
    max_rollover: str | None = None  # the most a rollover block holds (None: no limit)
    price_multiplier: str = "1"  # the model prices times this for the tier's users (markup)


class TierList(Struct):
    tiers: list[TierInfo]


class KeyCreated(Struct):
    key: str
    name: str
    scopes: list[str]


class KeyInfo(Struct):
    name: str
    scopes: list[str]
    created_at: str | None
    revoked_at: str | None


class ErrorBody(Struct):
    status_code: int
    detail: str


class PaymentRequired(Struct):
    status_code: int
    detail: str
    reason: str
    credits_remaining: str


def fingerprint(*parts: object) -> str:
    """A stable digest of a request body, so a retry with a different body is told apart."""
    return hashlib.blake2b(_encode_sorted(parts), digest_size=12).hexdigest()


_encode_sorted = msgspec.json.Encoder(order="sorted", decimal_format="number").encode
