"""Running load: wrk from a separate process, paced or flat out, with the gateway's flush lag
watched meanwhile; the baselines' uvicorn command."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request

from loadtests.bench.report import Result
from loadtests.bench.scenarios import LUA


def paced_rate(
    url: str, args: argparse.Namespace, env: dict[str, str], target: float
) -> dict[str, str]:
    """wrk settings that pace the load at about target debits/s. Each connection waits between
    its requests, so the answer time slows it further: short trial runs measure by how much and
    the rate asked for is raised to make up for it, until within 5 % (answers slow down as the
    load rises, so one correction falls short), at most 4 times."""
    pacing = {"RATE": str(round(target)), "CONNS": str(args.connections)}
    for _ in range(4):
        trial = wrk(url, 3, args.connections, {**env, **pacing})
        got = sum(n for code, n in trial["statuses"].items() if code.startswith("2"))  # type: ignore[attr-defined]
        achieved = got / float(trial["seconds"])  # type: ignore[arg-type]
        if achieved <= 0 or abs(achieved - target) < 0.05 * target:
            break
        pacing["RATE"] = str(round(float(pacing["RATE"]) * target / achieved))
    return pacing


def wanted(name: str, only: list[str] | None) -> bool:
    return not only or any(word in name for word in only)


def wrk(url: str, duration: int, connections: int, env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "5s",
            "-s",
            str(LUA),
            url,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    ).stdout
    m = re.search(
        r"BENCH requests=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+) "
        r"errors=(\d+) statuses=(\S*)",
        out,
    )
    if m is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    statuses = dict(part.split(":") for part in m.group(6).split(",") if part)
    return {
        "requests": int(m.group(1)),
        "seconds": int(m.group(2)) / 1e6,
        "p50_ms": int(m.group(3)) / 1000,
        "p99_ms": int(m.group(4)) / 1000,
        "errors": int(m.group(5)),
        "statuses": {k: int(v) for k, v in statuses.items()},
    }


class LagWatch:
    """Polls the gateway's /health/ready while a scenario runs: the age of the oldest unflushed
    event (the flush lag) and the backlog, at their worst."""

    def __init__(self, ready_url: str, every: float = 0.25) -> None:
        self.url, self.every = ready_url, every
        self.lag, self.backlog = 0.0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as answer:
                    flusher = json.load(answer).get("flusher") or {}
            except (OSError, ValueError):
                continue  # not ready (503) or too busy to answer: the next poll tells
            self.lag = max(self.lag, float(flusher.get("oldest_event_age_seconds", 0)))
            self.backlog = max(self.backlog, int(flusher.get("backlog", 0)))

    def __enter__(self) -> LagWatch:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def run_scenario(
    target: str,
    name: str,
    url: str,
    args: argparse.Namespace,
    env: dict[str, str],
    per_request: int = 1,
    expect_402: bool = False,
    connections: int | None = None,
    ready_url: str | None = None,
) -> Result:
    watch = LagWatch(ready_url) if ready_url else None
    with watch or contextlib.nullcontext():
        w = wrk(url, args.duration, connections or args.connections, env)
    statuses: dict[str, int] = w["statuses"]  # type: ignore[assignment]
    ok = sum(n for code, n in statuses.items() if code.startswith("2"))
    unexpected = sum(
        n
        for code, n in statuses.items()
        if not code.startswith("2") and not (expect_402 and code == "402")
    )
    answered = ok + (statuses.get("402", 0) if expect_402 else 0)
    result = Result(
        target,
        name,
        int(w["requests"]),  # type: ignore[call-overload]
        round(answered * per_request / float(w["seconds"]), 1),  # type: ignore[arg-type]
        w["p50_ms"],
        w["p99_ms"],
        statuses,
        int(w["errors"]),  # type: ignore[arg-type, call-overload]
        unexpected,
        round(watch.lag, 3) if watch else None,
        watch.backlog if watch else None,
    )
    lag = f"  flush lag max {watch.lag:.2f} s, backlog max {watch.backlog:,}" if watch else ""
    print(
        f"  {target:<10} {name:<28} {result.debits_per_s:>10,.0f} debits/s  p50 "
        f"{result.p50_ms:6.2f} ms  p99 {result.p99_ms:7.2f} ms  {statuses}{lag}",
        flush=True,
    )
    return result


def uvicorn(app: str, port_env: dict[str, str], workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--factory",
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
