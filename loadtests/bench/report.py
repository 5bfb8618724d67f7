"""What a benchmark run found: a result per target and scenario, the ratios, the drain."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Result:
    target: str
    scenario: str
    requests: int
    debits_per_s: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    errors: int
    unexpected: int = 0  # answers other than 2xx and the intended 402s
    flush_lag_max_s: float | None = None  # gateway: oldest unflushed event's age, at worst
    backlog_max: int | None = None  # gateway: unflushed events, at most
    of_peak: float | None = None  # paced scenarios: the load reached, a fraction of the peak


@dataclass
class Report:
    machine: str
    date: str
    settings: dict[str, object]
    results: list[Result] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    flusher: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    growth: dict[str, object] = field(default_factory=dict)


def ratios(results: list[Result]) -> dict[str, float]:
    """The gateway's debits/s over each baseline's, per scenario the baselines run; with a
    replica, the gateway's in replica mode over its own in primary mode, per scenario."""
    by = {(r.target, r.scenario): r.debits_per_s for r in results}
    out: dict[str, float] = {}
    for r in results:
        if r.target == "gateway-replica" and by.get(("gateway", r.scenario)):
            out[f"replica/primary ({r.scenario})"] = round(
                r.debits_per_s / by[("gateway", r.scenario)], 2
            )
    flat_out = {
        r.scenario for r in results if r.target in ("naive", "pg-direct") and r.of_peak is None
    }
    for scenario in sorted(flat_out):
        gw = by.get(("gateway", scenario))
        for base in ("naive", "pg-direct"):
            if gw and by.get((base, scenario)):
                out[f"gateway/{base} ({scenario})"] = round(gw / by[(base, scenario)], 2)
    return out
