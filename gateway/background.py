"""Background work: the write-behind flusher every flush_interval and the renewal of idle users
on a cron, on one APScheduler.

It runs inside the app (tests; `metering serve --flusher inline`) or, by default under
`metering serve`, in a process of its own (`metering flusher`, started and stopped by serve),
so that a flush, which parses and encodes thousands of events at once, never holds up an event
loop that is answering debits (measured: p99 of single debits 15.6 ms with the flusher in the
worker, 2.1 ms without, at one request at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.clock import Clock, system_clock
from gateway.connect import connect_redis
from gateway.flusher import Flusher, FlushLoop
from gateway.keys import Keys
from gateway.renewal import renew_idle
from gateway.service import CreditService
from gateway.settings import Settings
from gateway.tiers import load_tiers
from persistence.db import open_pool

log = logging.getLogger("metering.background")


def redis_client(settings: Settings) -> Redis:
    return connect_redis(settings.redis_url, settings.redis_timeout)


class Background:
    """The flush loop and the renewal cron; nothing runs for a zero interval or cron "off"."""

    def __init__(self, settings: Settings, flusher: Flusher, service: CreditService) -> None:
        self.settings = settings
        self.loop = FlushLoop(flusher, settings.flush_interval)
        self.service = service
        self.scheduler = AsyncIOScheduler()

    @property
    def active(self) -> bool:
        return self.settings.flush_interval > 0 or self.settings.renew_cron != "off"

    async def start(self) -> None:
        with contextlib.suppress(RedisError, OSError):  # Redis down at start-up: no marker yet
            await self.loop.start()
        if self.settings.flush_interval > 0:
            self.scheduler.add_job(
                self.loop.tick,
                "interval",
                seconds=self.settings.flush_interval,
                max_instances=1,
                coalesce=True,
                id="flush",
            )
        if self.settings.renew_cron != "off":
            self.scheduler.add_job(
                _renew_job,
                CronTrigger.from_crontab(self.settings.renew_cron, timezone="UTC"),
                args=[self.service],
                max_instances=1,
                coalesce=True,
                id="renew",
            )
        self.scheduler.start()

    async def stop(self) -> None:
        self.scheduler.shutdown(wait=False)
        if self.settings.flush_interval > 0:
            await self.loop.tick()  # hand over what is pending before stopping


async def _renew_job(service: CreditService) -> None:
    try:
        await renew_idle(service)
    except Exception:
        log.exception("renewing idle users failed; retried at the next run")


async def run_forever(
    settings: Settings, clock: Clock = system_clock, parent: int | None = None
) -> None:
    """`metering flusher`: the background work with pools of its own, until SIGTERM or SIGINT,
    or until the parent process (the `metering serve` that started it) is gone."""
    redis = redis_client(settings)
    pool = await open_pool(settings.database_url, max_size=8)
    keys = Keys(settings.key_prefix, settings.shards)
    service = CreditService(
        redis,
        pool,
        keys,
        load_tiers(settings.tiers_file),
        clock,
        settings.idempotency_ttl,
        settings.period,
        settings.pricing_cache_ttl,
        settings.max_backlog,
    )
    background = Background(settings, Flusher(redis, pool, keys, settings.flush_batch), service)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await background.start()
    log.info("flusher running (every %.1fs)", settings.flush_interval)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if parent is not None and os.getppid() != parent:
                log.warning("the serving process is gone; the flusher stops too")
                break
    finally:
        await background.stop()
        await redis.aclose()
        await pool.close()
