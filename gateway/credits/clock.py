"""Time for money comes from one clock: Redis's TIME, read inside each Lua script (lib.lua), so
every gateway instance judges hold expiry and period boundaries alike, whatever its own clock
says. The Python side only says how far the scripts' clock is shifted from Redis's (an offset,
0 in production), so tests and drills can cross months without sleeping; the offset never
reaches a Redis key's TTL.

A Clock here is that shifted time as seen from this process: the system clock in production,
a fake one in tests. offset_ms() turns it into the offset the scripts add to Redis's TIME."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from gateway.base.settings import Period as Period  # the type its functions take

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class OffsetClock:
    """The system clock shifted by a fixed number of seconds (METERING_CLOCK_OFFSET, for drills
    and tests with several processes: every instance given the same offset agrees)."""

    def __init__(self, seconds: float) -> None:
        self.shift = timedelta(seconds=seconds)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.shift


def configured(clock: Clock, offset_seconds: float) -> Clock:
    """The clock a process runs on: the one injected (tests), else the system clock shifted by
    METERING_CLOCK_OFFSET when one is set."""
    if clock is system_clock and offset_seconds:
        return OffsetClock(offset_seconds)
    return clock


def offset_ms(clock: Clock) -> int:
    """How far the clock is from this machine's: what the scripts add to Redis's TIME (0 for the
    system clock, so production reads Redis's time as it is)."""
    if clock is system_clock:
        return 0
    if isinstance(clock, OffsetClock):
        return int(clock.shift.total_seconds() * 1000)
    return epoch_ms(clock()) - epoch_ms(datetime.now(UTC))


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


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
