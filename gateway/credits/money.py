"""Exact money: Decimal at the edges, integer micro-credits (6 decimal places) inside.

Credits are never floats. ``numeric(12,6)`` in PostgreSQL holds at most 999999.999999,
so every balance and amount fits in 10**12 micro-credits, far inside a Lua double's
exact integer range (2**53).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICRO = 1_000_000
SCALE = Decimal("0.000001")
MAX_MICRO = 999_999_999_999  # numeric(12,6) maximum, 999999.999999
MAX_AMOUNT = Decimal("999999.999999")


class AmountError(ValueError):
    """An amount a client sent cannot be used; the message says why."""


def parse_amount(value: Decimal | int | str, *, field: str = "amount") -> int:
    """Validate a client amount and return it in micro-credits.

    Accepts a Decimal (msgspec decodes JSON numbers and strings to it exactly), an int
    or a decimal string. It must be finite, > 0, have at most 6 decimal places and be
    at most 999999.999999.
    """
    if isinstance(value, bool):
        raise AmountError(f"{field} must be a decimal number, not a boolean")
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise AmountError(f"{field} must be a decimal number, got {str(value)[:40]!r}") from None
    if not dec.is_finite():
        raise AmountError(f"{field} must be a finite number")
    if dec <= 0:
        raise AmountError(f"{field} must be greater than 0")
    if dec > MAX_AMOUNT:
        raise AmountError(f"{field} must be at most {MAX_AMOUNT}")
    if dec.quantize(SCALE) != dec:
        raise AmountError(f"{field} has more than 6 decimal places")
    return int(dec * MICRO)


def to_micro(value: Decimal) -> int:
    """Convert a Decimal with at most 6 places (e.g. a numeric(12,6) column) to micro-credits."""
    return int(value.scaleb(6).to_integral_exact())


def to_decimal(micro: int) -> Decimal:
    """Micro-credits to a Decimal with exactly 6 places."""
    return Decimal(micro).scaleb(-6).quantize(SCALE)


def fmt(micro: int) -> str:
    """Micro-credits as the decimal string clients see, always with 6 places."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d}"
