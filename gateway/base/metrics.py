"""Prometheus metrics. Counters and the latency histogram live in each process; `metering serve`
points PROMETHEUS_MULTIPROC_DIR at a fresh directory so a scrape of any worker sums them over
all workers. The backlog and the flush lag are read from Redis at scrape time, so they are the
same whichever gateway is scraped."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

PROMETHEUS_TEXT = "text/plain; version=0.0.4"  # the text exposition format generate_latest writes

DEBITS = Counter("metering_debits", "Debits by outcome", ["outcome"])
LATENCY = Histogram(
    "metering_debit_seconds",
    "Debit latency inside the gateway",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
HYDRATIONS = Counter("metering_hydrations", "Users loaded into Redis from PostgreSQL")
FLUSH_BATCHES = Counter("metering_flush_batches", "Flush rounds that moved events")
FLUSHED_EVENTS = Counter("metering_flushed_events", "Events written to PostgreSQL")
FLUSH_FAILURES = Counter("metering_flush_failures", "Flush rounds that failed")
REDIS_ERRORS = Counter("metering_redis_errors", "Requests failed by a Redis error")
POSTGRES_ERRORS = Counter("metering_postgres_errors", "Requests failed by a PostgreSQL error")
REDIS_DATA_LOSSES = Counter("metering_redis_data_losses", "Times Redis was found emptied")
REDIS_FAILOVERS = Counter(
    "metering_redis_failovers", "Times the flusher saw a Redis primary with a new replication id"
)
REDIS_PRIMARY_MOVES = Counter(
    "metering_redis_primary_moves",
    "Times a gateway process dropped its connections to a Redis primary the sentinels no longer "
    "name",
)
REPLICA_WAITS_SHORT = Counter(
    "metering_replica_waits_short",
    "Pipelines whose changes the replicas did not confirm in time (replica mode: answered 503)",
)
RESYNCS = Counter(
    "metering_resyncs",
    "Users brought back in step after Redis lost changes PostgreSQL had booked (a failover)",
)
FLUSHER_RESTARTS = Counter(
    "metering_flusher_restarts", "Times metering serve restarted its flusher process"
)
DEAD_LETTERS = Counter(
    "metering_dead_letters", "Events PostgreSQL refused, moved to a dead-letter stream"
)

HTTP_RESPONSES = Counter(
    "metering_http_responses", "Responses by status code, every route", ["code"]
)
_ANSWERED: dict[int, Any] = {}  # status -> its child counter: labels() takes 1.7 us, this 0.3


def count_response(status: int) -> None:
    """One answer of this status in metering_http_responses_total (called for every request)."""
    child = _ANSWERED.get(status)
    if child is None:
        child = _ANSWERED[status] = HTTP_RESPONSES.labels(str(status))
    child.inc()


RESERVATIONS = Counter(
    "metering_reservations",
    "Reservation calls (reserve, commit, release, extend) by outcome: ok, replay, "
    "insufficient_credits, monthly_cap_reached, expired, committed, released, conflict, "
    "not_found",
    ["operation", "outcome"],
)

OUTCOMES = {
    200: "ok",
    400: "invalid",
    401: "unauthorized",
    402: "insufficient_credits",
    403: "forbidden",
    409: "conflict",
    413: "invalid",
    422: "unprocessable",
    503: "unavailable",
}


def debit_outcome(status: int, replayed: bool = False, reason: str | None = None) -> str:
    if status == 200 and replayed:
        return "replay"
    if status == 402 and reason == "monthly_cap_reached":
        return "monthly_cap_reached"
    return OUTCOMES.get(status, "error")


class RedisState:
    """Backlog per shard and the age of the oldest unflushed event, read at scrape time."""

    def __init__(self, status: dict[str, Any], per_shard: list[int], ceiling: int) -> None:
        self.status = status
        self.per_shard = per_shard
        self.ceiling = ceiling

    def collect(self) -> Iterator[Metric]:
        backlog = GaugeMetricFamily(
            "metering_stream_backlog", "Unflushed events per shard", labels=["shard"]
        )
        for shard, n in enumerate(self.per_shard):
            backlog.add_metric([str(shard)], n)
        yield backlog
        yield GaugeMetricFamily(
            "metering_stream_backlog_max",
            "The most unflushed events a shard may hold (METERING_MAX_BACKLOG): past it, "
            "changes of that shard's users answer 503",
            value=self.ceiling,
        )
        yield GaugeMetricFamily(
            "metering_flush_lag_seconds",
            "Age of the oldest unflushed event",
            value=self.status["oldest_event_age_seconds"],
        )
        yield GaugeMetricFamily(
            "metering_dead_letters_waiting",
            "Events PostgreSQL refused, in the dead-letter streams",
            value=self.status.get("dead_letters", 0),
        )
        yield GaugeMetricFamily(
            "metering_flusher_behind",
            "1 when the flusher is behind",
            value=1.0 if self.status["status"] == "behind" else 0.0,
        )
        yield GaugeMetricFamily(
            "metering_flushers_running",
            "Flushers that beat in the last 5 s on this key prefix (0: nothing is flushed)",
            value=self.status.get("running", 0),
        )


def render(extra: RedisState | None) -> bytes:
    if _multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    body = generate_latest(registry)
    if extra is not None:
        extra_registry = CollectorRegistry()
        extra_registry.register(extra)
        body += generate_latest(extra_registry)
    return body


def _registry() -> CollectorRegistry:
    if _multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def _totals(family_name: str, key: Callable[[dict[str, str]], str]) -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in _registry().collect():
        if family.name == family_name:
            for sample in family.samples:
                if sample.name == f"{family_name}_total":
                    label = key(sample.labels)
                    counts[label] = counts.get(label, 0.0) + sample.value
    return counts


def debit_counts() -> dict[str, float]:
    """Debits by outcome so far, over all workers of this gateway."""
    return _totals("metering_debits", lambda labels: labels["outcome"])


def reservation_counts() -> dict[str, float]:
    """Reservation calls so far, 'operation/outcome', over all workers of this gateway."""
    return _totals(
        "metering_reservations", lambda labels: f"{labels['operation']}/{labels['outcome']}"
    )


def _multiprocess() -> bool:
    """True when this process records into PROMETHEUS_MULTIPROC_DIR (decided at import)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")) and "Mmap" in getattr(
        values.ValueClass, "__name__", type(values.ValueClass).__name__
    )
