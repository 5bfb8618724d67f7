"""The proxy handler's counters in Prometheus form, when prometheus_client is installed beside
the proxy (LiteLLM's own `prometheus` callback serves the default registry on the proxy's
/metrics): commits and releases that failed after their retries, holds found expired and
charged by a debit, calls that cost more than their payer had, and refusals by reason. Without
prometheus_client these are no-ops; the handler's attributes count the same either way."""

from __future__ import annotations

from typing import Any


class _Off:
    def labels(self, *values: str) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        return None


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
    try:
        from prometheus_client import Counter
    except ImportError:
        return _Off()
    return Counter(name, doc, labels)


SETTLEMENT_FAILURES = _counter(
    "metering_proxy_settlement_failures",
    "Commits and releases that failed after the client's retries (their holds expire)",
)
LATE_COMMITS = _counter(
    "metering_proxy_late_commits", "Calls whose hold had expired, charged by a direct debit"
)
SHORT_COMMITS = _counter(
    "metering_proxy_short_commits", "Calls that cost more than their payer had: charged the hold"
)
REFUSALS = _counter(
    "metering_proxy_refusals",
    "Calls refused before the model call, by reason: no_payer, unpriced_model, "
    "insufficient_credits, monthly_cap_reached, refused, gateway_unreachable",
    ("reason",),
)
