"""The benchmark: the gateway beside its two baselines, in one run, on private servers.

    python -m loadtests.bench [--duration 10] [--connections 64] [--workers 2]

Starts a private Redis (noeviction, no persistence) and a private PostgreSQL, then the three
targets (the gateway with every feature on; the naive one-EVALSHA endpoint; the PostgreSQL-direct
endpoint) under uvicorn with the same server settings, and runs each scenario on each target in
turn, driven by wrk from a separate process. Prints debits/s, p50/p99 latency and answers per
scenario, with the ratios gateway/naive and gateway/PostgreSQL-direct. Then it measures the
flusher's drain rate and the Redis memory per user and per unflushed event. Figures also go to
build/bench.json. Nothing here asserts a time: it measures and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import asyncpg
import redis as redis_sync
from redis.asyncio import Redis

from gateway.flusher import Flusher
from gateway.ids import new_id
from gateway.keys import Keys
from gateway.money import MICRO
from gateway.scripts import Scripts
from loadtests.servers import PrivatePostgres, PrivateRedis, ServerProcess
from persistence import db
from persistence.migrate import prepare

ROOT = Path(__file__).resolve().parent
LUA = ROOT / "wrk" / "debit.lua"
ADMIN = "bench-admin-key"
USERS = 1000
BIG = 900_000  # credits each benchmark user starts with


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


@dataclass(frozen=True)
class Scenario:
    name: str
    env: dict[str, str]  # for loadtests/wrk/debit.lua
    path: str = ""  # after the debit path
    baselines: bool = False  # the baselines run it too
    expect_402: bool = False
    warm: bool = False
    paced: float = 0.0  # > 0: paced at this fraction of the target's peak on "1000 users"
    connections: int | None = None  # instead of --connections


SCENARIOS = [
    Scenario("1000 users", {"USERS": str(USERS), "PREFIX": "bench"}, baselines=True),
    Scenario(
        "1000 users at 70% of peak",
        {"USERS": str(USERS), "PREFIX": "bench"},
        baselines=True,
        paced=0.7,
    ),
    Scenario("one hot user", {"USERS": "1", "PREFIX": "bench"}, baselines=True),
    Scenario(
        "batch (100 per request)",
        {"USERS": str(USERS), "PREFIX": "bench", "BATCH": "100"},
        path="/batch",
    ),
    Scenario(  # 8 connections: 8,000 debits in flight (64 would be 64,000)
        "batch (1000 per request, 8 connections)",
        {"USERS": str(USERS), "PREFIX": "bench", "BATCH": "1000"},
        path="/batch",
        connections=8,
    ),
    Scenario(
        "insufficient-credit storm",
        {"USERS": str(USERS), "PREFIX": "broke"},
        expect_402=True,
        warm=True,
    ),
    Scenario(
        "retries of one request_id",
        {"USERS": "1", "PREFIX": "bench", "RETRY_POOL": "100"},
    ),
]


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


async def prepare_database(url: str, users: int) -> None:
    await prepare(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO user_credits (user_id, credits_remaining, credits_allocated, tier) "
            "SELECT 'bench-' || i, $1, $1, 'enterprise' FROM generate_series(0, $2 - 1) i "
            "UNION ALL SELECT 'broke-' || i, 0, 0, 'free' FROM generate_series(0, $2 - 1) i",
            BIG,
            users,
        )
        await conn.execute(
            "INSERT INTO credit_transactions (id, user_id, transaction_type, amount, "
            "balance_after, request_id) SELECT gen_random_uuid(), user_id, 'allocation', "
            "credits_remaining, credits_remaining, 'sys:create' FROM user_credits"
        )
    finally:
        await conn.close()


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


async def flusher_drain(redis_url: str, database_url: str, events: int) -> dict[str, float]:
    """Fill the streams with `events` debits straight through the Lua script, then time one
    flush that drains them into PostgreSQL."""
    r = Redis.from_url(redis_url, decode_responses=True)
    pool = await db.open_pool(database_url, max_size=4)
    keys = Keys("drain", 16)
    scripts = Scripts(r, max_backlog=events + 1)
    try:
        before = int((await r.info("memory"))["used_memory"])
        async with r.pipeline(transaction=False) as pipe:
            for i in range(USERS):
                await scripts.hydrate(
                    keys=[keys.user(f"bench-{i}")],
                    args=[
                        BIG * MICRO,
                        BIG * MICRO,
                        "enterprise",
                        "",
                        "2026-11-01T00:00:00+00:00",
                        0,
                        0,
                        0,
                        0,
                    ],
                    client=pipe,
                )
            await pipe.execute()
        users_mem = int((await r.info("memory"))["used_memory"])
        await r.script_load(scripts.apply.script)
        now_ms = int(time.time() * 1000)
        sent = 0
        while sent < events:
            async with r.pipeline(transaction=False) as pipe:
                for i in range(sent, min(sent + 5000, events)):
                    user = f"bench-{i % USERS}"
                    pipe.evalsha(
                        scripts.apply.sha,
                        4,
                        keys.user(user),
                        keys.request(user, f"d{i}"),
                        keys.user_stream(user),
                        keys.holds(user),
                        user,
                        now_ms,
                        0,
                        "2026-11-01T00:00:00+00:00",
                        new_id(),
                        -100,
                        "fp",
                        new_id(),
                        3600,
                        f"d{i}",
                        "usage",
                    )
                await pipe.execute()
            sent = min(sent + 5000, events)
        events_mem = int((await r.info("memory"))["used_memory"])
        start = time.perf_counter()
        stats = await Flusher(r, pool, keys, 5000).flush()
        seconds = time.perf_counter() - start
        return {
            "events": stats.events,
            "seconds": round(seconds, 2),
            "events_per_s": round(stats.events / seconds, 1),
            "redis_bytes_per_user": round((users_mem - before) / USERS, 1),
            "redis_bytes_per_unflushed_event": round((events_mem - users_mem) / events, 1),
        }
    finally:
        await r.aclose()
        await pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--flush-events",
        type=int,
        default=200_000,
        help="events for the flusher drain measurement (1000000 for the target)",
    )
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument(
        "--only",
        action="append",
        metavar="WORDS",
        help="run only the scenarios whose name contains WORDS (repeatable), e.g. --only batch",
    )
    parser.add_argument("--skip-flusher", action="store_true", help="no drain measurement")
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="PostgreSQL without fsync, as the tests run it (by default it keeps fsync on, as in "
        "production: the PostgreSQL-direct baseline commits every debit, the flusher a batch)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk (make bench installs it)", file=sys.stderr)
        return 2

    pg, rd = PrivatePostgres(durable=not args.no_fsync), PrivateRedis()
    pg.start()
    rd.start()
    gateway_db, pg_db = f"{pg.server}/bench_gateway", f"{pg.server}/bench_direct"
    report = Report(
        machine=f"{os.cpu_count()} cores, {os.uname().machine}, Python {sys.version.split()[0]}",
        date=time.strftime("%Y-%m-%d"),
        settings=vars(args),
    )
    try:
        asyncio.run(prepare_database(gateway_db, USERS))
        asyncio.run(prepare_database(pg_db, USERS))
        client = redis_sync.Redis.from_url(rd.url)
        client.mset({f"naive:bench-{i}": BIG * MICRO for i in range(USERS)})
        client.mset({f"naive:broke-{i}": 0 for i in range(USERS)})
        client.close()
        targets = [
            (
                "gateway",
                [sys.executable, "-m", "gateway.cli", "serve", "--workers", str(args.workers)],
                {
                    "METERING_DATABASE_URL": gateway_db,
                    "METERING_REDIS_URL": rd.url,
                    "METERING_ADMIN_KEY": ADMIN,
                    "METERING_RENEW_CRON": "off",
                },
                "/api/v1/credits/debit",
                "/health/live",
            )
        ]
        if not args.skip_baselines:
            targets += [
                (
                    "naive",
                    uvicorn("loadtests.baselines.naive:create_app", {}, args.workers),
                    {"BENCH_REDIS_URL": rd.url},
                    "/debit",
                    "/debit",
                ),
                (
                    "pg-direct",
                    uvicorn("loadtests.baselines.pg_direct:create_app", {}, args.workers),
                    {"BENCH_DATABASE_URL": pg_db},
                    "/debit",
                    "/debit",
                ),
            ]
        print(
            f"benchmark: {report.machine}; {args.duration} s per scenario, "
            f"{args.connections} connections, {args.workers} workers",
            flush=True,
        )
        # every server up at once, then scenario by scenario each target in turn: a ratio
        # compares runs seconds apart, not minutes (this machine's speed drifts over minutes)
        servers: list[tuple[str, ServerProcess, str, dict[str, str]]] = []
        try:
            for target, cmd, env, path, health in targets:
                if not any(
                    wanted(sc.name, args.only) and (sc.baselines or target == "gateway")
                    for sc in SCENARIOS
                ):
                    continue
                server = ServerProcess(cmd, env, health=health)
                server.start()
                key = {"KEY": ADMIN} if target == "gateway" else {}
                servers.append((target, server, f"{server.url}{path}", key))
            for _, _, url, key in servers:
                wrk(url, 2, args.connections, {**key, "USERS": str(USERS), "PREFIX": "bench"})
            for scenario in SCENARIOS:
                if not wanted(scenario.name, args.only):
                    continue
                for target, server, url, key in servers:
                    if target != "gateway" and not scenario.baselines:
                        continue
                    env = {**key, **scenario.env}
                    peak = None
                    if scenario.paced:
                        peak = next(
                            (
                                r.debits_per_s
                                for r in report.results
                                if (r.target, r.scenario) == (target, "1000 users")
                            ),
                            None,
                        )
                        if peak is None:
                            continue
                        env.update(paced_rate(url, args, env, scenario.paced * peak))
                    if scenario.warm:  # hydrate its users first (the storm's broke users)
                        wrk(url + scenario.path, 1, args.connections, env)
                    report.results.append(
                        run_scenario(
                            target,
                            scenario.name,
                            url + scenario.path,
                            args,
                            env,
                            per_request=int(env.get("BATCH", "1")),
                            expect_402=scenario.expect_402,
                            connections=scenario.connections,
                            ready_url=f"{server.url}/health/ready" if target == "gateway" else None,
                        )
                    )
                    last = report.results[-1]
                    if peak:
                        last.of_peak = round(last.debits_per_s / peak, 2)
                        print(f"    paced at {last.of_peak:.0%} of peak", flush=True)
        finally:
            for _, server, _, _ in servers:
                server.stop()
        by = {(r.target, r.scenario): r.debits_per_s for r in report.results}
        for scenario in ("1000 users", "one hot user"):
            gw = by.get(("gateway", scenario))
            for base in ("naive", "pg-direct"):
                if gw and by.get((base, scenario)):
                    report.ratios[f"gateway/{base} ({scenario})"] = round(
                        gw / by[(base, scenario)], 2
                    )
        print("ratios:", json.dumps(report.ratios, indent=2), flush=True)
        if not args.skip_flusher:
            report.flusher = asyncio.run(flusher_drain(rd.url, gateway_db, args.flush_events))
            print("flusher and memory:", json.dumps(report.flusher, indent=2), flush=True)
    finally:
        rd.close()
        pg.close()
    out = ROOT.parent / "build" / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(asdict(report), indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
