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
import json
import os
import shutil
import sys
import time
from dataclasses import asdict

import redis as redis_sync

from gateway.credits.money import MICRO
from loadtests.bench import growth
from loadtests.bench.drain import flusher_drain, prepare_database
from loadtests.bench.report import Report, ratios
from loadtests.bench.runners import paced_rate, run_scenario, uvicorn, wanted, wrk
from loadtests.bench.scenarios import ADMIN, BIG, BLOCK_COUNTS, ROOT, SCENARIOS, USERS
from loadtests.servers import PrivatePostgres, PrivateRedis, ServerProcess
from loadtests.topologies import PrivateReplicated


def is_gateway(target: str) -> bool:
    return target.startswith("gateway")


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
        "--users",
        type=int,
        default=0,
        help="cost as data grows (loadtests/bench/growth.py): this many users generated in "
        "PostgreSQL, then /usage and reconcile timed at that size (1050000 for the target)",
    )
    parser.add_argument(
        "--ledger-rows",
        type=int,
        default=0,
        help="ledger rows for --users (10500000 for the target; default 10 a user)",
    )
    parser.add_argument(
        "--heavy-rows",
        type=int,
        default=1_000_000,
        help="of the ledger rows, the usage rows of the one user whose /usage is timed",
    )
    parser.add_argument("--usage-calls", type=int, default=200, help="timed /usage calls")
    parser.add_argument(
        "--replica",
        action="store_true",
        help="Redis with a replica, and the gateway in both acknowledgement modes side by "
        "side: 'gateway' (METERING_REDIS_DURABILITY=primary) and 'gateway-replica' (replica: "
        "a WAIT per pipeline)",
    )
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

    pg = PrivatePostgres(durable=not args.no_fsync)
    rd: PrivateRedis | PrivateReplicated = PrivateReplicated() if args.replica else PrivateRedis()
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
        for n in BLOCK_COUNTS:  # the baselines have no blocks: the same users, one balance
            client.mset({f"naive:blk{n}-{i}": BIG * MICRO for i in range(USERS)})
        client.close()
        serve = [sys.executable, "-m", "gateway.ops.cli", "serve", "--workers", str(args.workers)]
        modes = [("gateway", "primary")] + (
            [("gateway-replica", "replica")] if args.replica else []
        )
        targets = [
            (
                name,
                serve,
                {
                    "METERING_DATABASE_URL": gateway_db,
                    "METERING_REDIS_URL": rd.url,
                    "METERING_REDIS_DURABILITY": mode,
                    "METERING_ADMIN_KEY": ADMIN,
                    "METERING_RENEW_CRON": "off",
                },
                "/api/v1/credits/debit",
                "/health/live",
            )
            for name, mode in modes
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
                    wanted(sc.name, args.only) and (sc.baselines or is_gateway(target))
                    for sc in SCENARIOS
                ):
                    continue
                server = ServerProcess(cmd, env, health=health)
                server.start()
                key = {"KEY": ADMIN} if is_gateway(target) else {}
                servers.append((target, server, f"{server.url}{path}", key))
            for _, _, url, key in servers:
                wrk(url, 2, args.connections, {**key, "USERS": str(USERS), "PREFIX": "bench"})
            for scenario in SCENARIOS:
                if not wanted(scenario.name, args.only):
                    continue
                for target, server, url, key in servers:
                    if not is_gateway(target) and not scenario.baselines:
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
                            ready_url=f"{server.url}/health/ready" if is_gateway(target) else None,
                        )
                    )
                    last = report.results[-1]
                    if peak:
                        last.of_peak = round(last.debits_per_s / peak, 2)
                        print(f"    paced at {last.of_peak:.0%} of peak", flush=True)
        finally:
            for _, server, _, _ in servers:
                server.stop()
        report.ratios = ratios(report.results)
        print("ratios:", json.dumps(report.ratios, indent=2), flush=True)
        if not args.skip_flusher:
            report.flusher = asyncio.run(flusher_drain(rd.url, gateway_db, args.flush_events))
            print("flusher and memory:", json.dumps(report.flusher, indent=2), flush=True)
        if args.users:
            rows = args.ledger_rows or 10 * args.users
            report.growth = growth.measure(
                f"{pg.server}/bench_growth",
                rd.url,
                args.users,
                rows,
                min(args.heavy_rows, rows // 2),
                args.usage_calls,
            )
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
