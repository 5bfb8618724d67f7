"""Time is passed in (never read inside the scripts), so tests can move it across periods."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

Clock = Callable[[], datetime]
Period = Literal["month", "week", "day"]


def system_clock() -> datetime:
    return datetime.now(UTC)


def period_start(now: datetime, period: Period = "month") -> datetime:
    """Start (UTC) of the allocation period containing now: calendar month by default,
    or ISO week (Monday) or day."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def epoch_ms(now: datetime) -> int:
    return int(now.timestamp() * 1000)


def period_end(now: datetime, period: Period = "month") -> datetime:
    """Start of the period after the one containing now."""
    start = period_start(now, period)
    step = {"day": timedelta(days=1), "week": timedelta(days=7), "month": timedelta(days=32)}
    return period_start(start + step[period], period)
