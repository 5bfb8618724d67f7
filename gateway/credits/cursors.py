"""Opaque keyset cursors for newest-first pages: (timestamp, id) of the last row returned."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime

from gateway.base.errors import BadRequest

FIRST_PAGE = (datetime.max.replace(tzinfo=UTC), uuid.UUID(int=(1 << 128) - 1))
# the times a client may send (cursors, from/to, expiries): well inside what Python's datetime
# and PostgreSQL can both convert to UTC (year 1 at +14:00 or 9999-12-31 at -05:00 cannot)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
TIME_RANGE = "between 1970-01-01 and 9999-01-01 (UTC)"


def in_range(t: datetime) -> datetime | None:
    """t in UTC when it has a time zone and lies in [EARLIEST, LATEST); else None."""
    if t.tzinfo is None:
        return None
    try:
        utc = t.astimezone(UTC)
    except (OverflowError, ValueError):
        return None
    return utc if EARLIEST <= utc < LATEST else None


def encode_cursor(at: datetime, ident: uuid.UUID) -> str:
    raw = f"{at.isoformat()}|{ident}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID]:
    if cursor is None:
        return FIRST_PAGE
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, ident = raw.partition("|")
        when, row = in_range(datetime.fromisoformat(at)), uuid.UUID(ident)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        when = None
    if when is None:
        raise BadRequest("cursor is not one this API returned")
    return when, row
