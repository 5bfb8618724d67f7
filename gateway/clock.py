"""Time is passed in, never read inside the scripts, so tests can move it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


def period_start(now: datetime) -> datetime:
    """Start of the calendar month (UTC) containing now: the current allocation period."""
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def epoch_ms(now: datetime) -> int:
    return int(now.timestamp() * 1000)
