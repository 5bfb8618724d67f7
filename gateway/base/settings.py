"""Settings, read from the environment when the app is built (never at import time)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Literal

import msgspec
from apscheduler.triggers.cron import CronTrigger

from gateway.base.connect import check_redis_url
from gateway.base.durable import Durability

# the allocation period (gateway/credits/clock.py computes its boundaries on the one clock)
Period = Literal["month", "week", "day"]


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/metering"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str = DEFAULT_REDIS_URL
    database_url: str = DEFAULT_DATABASE_URL
    admin_key: str | None = None
    flush_interval: float = 1.0  # seconds; 0 disables the background flusher
    flush_batch: int = 5000  # events per shard per Postgres transaction
    tiers_file: str | None = None
    key_prefix: str = "m"
    shards: int = 16
    idempotency_ttl: int = 24 * 3600  # seconds a request_id is remembered in Redis, at least
    # the requests a second the idempotency records are laid out for (record_buckets)
    idempotency_rate: int = 1000
    # seconds a retry of a booked request is charged once although Redis forgot its id: the
    # flusher gives back a second charge with the same body (persistence/batch_queries.py)
    retry_horizon: int = 30 * 24 * 3600
    redis_timeout: float = 2.0  # seconds, socket and connect timeout
    # 'replica': answer a change only once WAIT confirms it on redis_wait_replicas replicas
    # (gateway/base/durable.py); unset: 'replica' on Sentinel and Cluster URLs, else 'primary'
    redis_durability: Durability | None = None
    redis_wait_replicas: int = 1
    redis_wait_ms: int = 200  # how long a change waits for its replicas before a 503
    auth_cache_ttl: float = 5.0  # seconds an API key lookup is cached per process
    # a client address failing authentication this many times in the window gets 429 till its end
    header_timeout: float = 10.0  # seconds from a request's first byte to its headers' end
    limit_concurrency: int = 1000  # connections and requests per worker; past it 503
    public_schema: bool = False  # the OpenAPI schema and its pages without a key
    auth_fail_limit: int = 30
    auth_fail_window: float = 60.0
    pricing_cache_ttl: float = 5.0  # seconds model prices are cached per process
    max_body_bytes: int = 64 * 1024
    max_backlog: int = 500_000  # unflushed events per shard before writes get 503
    flush_behind_seconds: float = 30.0  # health says the flusher is behind past this lag
    eviction_check: Literal["refuse", "warn"] = "refuse"  # Redis must not evict unflushed state
    period: Period = "month"  # allocation period: month (calendar), week (ISO) or day
    renew_cron: str = "*/10 * * * *"  # crontab (UTC) for renewing idle users; "off" disables
    renew_rate: float = 0.0  # idle users renewed a second at most (0: as fast as Redis goes)
    webhook_url: str | None = None  # low-balance alerts are POSTed here (none when unset)
    webhook_secret: str | None = None  # HMAC-SHA256 key signing each webhook
    webhook_max_attempts: int = 12  # tries per webhook (backoff 2 s doubling, at most 1 h)
    # credits.expiring webhooks: one per credit block holding at least expiring_min credits
    # whose expiry is at most expiring_notice seconds away (queued by the renewal cron's runs)
    expiring_notice: float = 3 * 86400.0
    expiring_min: str = "1.00"
    # seconds added to Redis's time, the one clock for money: 0 in production; drills and tests
    # set it on every instance alike to cross a period boundary without waiting
    clock_offset: float = 0.0


_ENV = {
    "redis_url": "METERING_REDIS_URL",
    "database_url": "METERING_DATABASE_URL",
    "admin_key": "METERING_ADMIN_KEY",
    "flush_interval": "METERING_FLUSH_INTERVAL",
    "flush_batch": "METERING_FLUSH_BATCH",
    "tiers_file": "METERING_TIERS_FILE",
    "key_prefix": "METERING_KEY_PREFIX",
    "shards": "METERING_SHARDS",
    "idempotency_ttl": "METERING_IDEMPOTENCY_TTL",
    "idempotency_rate": "METERING_IDEMPOTENCY_RATE",
    "retry_horizon": "METERING_RETRY_HORIZON",
    "redis_timeout": "METERING_REDIS_TIMEOUT",
    "redis_durability": "METERING_REDIS_DURABILITY",
    "redis_wait_replicas": "METERING_REDIS_WAIT_REPLICAS",
    "redis_wait_ms": "METERING_REDIS_WAIT_MS",
    "auth_cache_ttl": "METERING_AUTH_CACHE_TTL",
    "header_timeout": "METERING_HEADER_TIMEOUT",
    "limit_concurrency": "METERING_LIMIT_CONCURRENCY",
    "public_schema": "METERING_PUBLIC_SCHEMA",
    "auth_fail_limit": "METERING_AUTH_FAIL_LIMIT",
    "auth_fail_window": "METERING_AUTH_FAIL_WINDOW",
    "pricing_cache_ttl": "METERING_PRICING_CACHE_TTL",
    "max_body_bytes": "METERING_MAX_BODY_BYTES",
    "max_backlog": "METERING_MAX_BACKLOG",
    "flush_behind_seconds": "METERING_FLUSH_BEHIND_SECONDS",
    "eviction_check": "METERING_EVICTION_CHECK",
    "period": "METERING_PERIOD",
    "renew_cron": "METERING_RENEW_CRON",
    "renew_rate": "METERING_RENEW_RATE",
    "webhook_url": "METERING_WEBHOOK_URL",
    "webhook_secret": "METERING_WEBHOOK_SECRET",
    "webhook_max_attempts": "METERING_WEBHOOK_MAX_ATTEMPTS",
    "expiring_notice": "METERING_EXPIRING_NOTICE",
    "expiring_min": "METERING_EXPIRING_MIN",
    "clock_offset": "METERING_CLOCK_OFFSET",
}


def settings_from_env(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from METERING_* variables; explicit overrides win."""
    env = os.environ if env is None else env
    raw: dict[str, object] = {f: env[v] for f, v in _ENV.items() if env.get(v, "") != ""}
    raw.update(overrides)
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:  # named as it was set: "at `$.renew_rate`" is
        # METERING_RENEW_RATE
        message = re.sub(r"`\$\.(\w+)`", lambda m: _ENV.get(m[1], m[0]), str(exc))
        raise SystemExit(f"invalid configuration: {message}") from None
    try:
        check_redis_url(settings.redis_url)
    except ValueError as exc:
        raise SystemExit(f"invalid configuration: {exc}") from None
    if settings.idempotency_ttl < 1 or settings.idempotency_rate < 1:
        raise SystemExit(
            "invalid configuration: METERING_IDEMPOTENCY_TTL and METERING_IDEMPOTENCY_RATE "
            "must be >= 1"
        )
    if settings.retry_horizon < settings.idempotency_ttl:
        raise SystemExit(
            "invalid configuration: METERING_RETRY_HORIZON must be at least "
            "METERING_IDEMPOTENCY_TTL"
        )
    if settings.redis_wait_replicas < 1:
        raise SystemExit("invalid configuration: METERING_REDIS_WAIT_REPLICAS must be >= 1")
    if not 0 < settings.redis_wait_ms < settings.redis_timeout * 1000:
        raise SystemExit(
            "invalid configuration: METERING_REDIS_WAIT_MS must be > 0 and below "
            f"METERING_REDIS_TIMEOUT ({settings.redis_timeout} s), or the wait would time out "
            "the connection"
        )
    if settings.renew_cron != "off":
        try:
            CronTrigger.from_crontab(settings.renew_cron, timezone="UTC")
        except ValueError as exc:
            raise SystemExit(
                f"invalid configuration: METERING_RENEW_CRON {settings.renew_cron!r} is not a "
                f"crontab (minute hour day month weekday) or 'off': {exc}"
            ) from None
    try:
        expiring_min_micro(settings)
    except ValueError as exc:
        raise SystemExit(f"invalid configuration: METERING_EXPIRING_MIN: {exc}") from None
    if not settings.renew_rate >= 0:  # NaN too
        raise SystemExit("invalid configuration: METERING_RENEW_RATE must be >= 0 users a second")
    if settings.expiring_notice < 0:
        raise SystemExit("invalid configuration: METERING_EXPIRING_NOTICE must be >= 0 seconds")
    if settings.webhook_url and not settings.webhook_secret:
        raise SystemExit(
            "invalid configuration: METERING_WEBHOOK_URL needs METERING_WEBHOOK_SECRET "
            "(webhooks are signed with it)"
        )
    return settings


def record_buckets(settings: Settings) -> int:
    """Idempotency buckets per shard and time slice (gateway/credits/keys.py): at the planned
    rate a slice's records, a window's worth, spread ~64 a bucket, under Redis's default
    hash-max-listpack-entries (128). Above that rate buckets grow past it and Redis stores them
    as hash tables (~100 B a record instead of ~50): correct, only larger."""
    per_shard = settings.idempotency_rate * settings.idempotency_ttl / settings.shards
    return max(1, math.ceil(per_shard / 64))


def durability(settings: Settings) -> Durability:
    """The acknowledgement mode: as set, or by topology: replica where Redis fails over by
    itself (Sentinel, Cluster), primary for one server (docs/reliability.md)."""
    if settings.redis_durability is not None:
        return settings.redis_durability
    scheme = settings.redis_url.partition("://")[0].lower()
    return "replica" if "+" in scheme else "primary"


def expiring_min_micro(settings: Settings) -> int:
    """METERING_EXPIRING_MIN in micro-credits: a decimal with at most 6 places, >= 0."""
    try:
        value = Decimal(settings.expiring_min)
    except InvalidOperation:
        raise ValueError(f"{settings.expiring_min!r} is not a decimal amount") from None
    micro = value.scaleb(6)
    if not value.is_finite() or value < 0 or micro != micro.to_integral_value():
        raise ValueError(f"{settings.expiring_min!r} must be >= 0 with at most 6 decimal places")
    return int(micro)
