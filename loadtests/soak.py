"""The soak: does the gateway's memory stay flat under a steady load?

    python -m loadtests.soak [--minutes 10] [--rate 1000] [--workers 2]

Starts a private Redis and PostgreSQL and `metering serve` (its workers and its flusher), drives
it at a paced rate with wrk (loadtests/wrk/debit.lua, unique request ids over 1000 users) for
the whole run, and samples every process's resident memory every --every seconds. Prints the
samples and, per process, the memory after the first minute (warm: caches filled, pools open)
and at the end, and writes build/soak.json. It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis as redis_sync

from loadtests.bench.drain import prepare_database
from loadtests.bench.scenarios import ADMIN, LUA, USERS
from loadtests.servers import GatewayProcess, PrivatePostgres, PrivateRedis

ROOT = Path(__file__).resolve().parent


def tree(pid: int) -> dict[int, str]:
    """pid and its descendants, with a short name each (serve, worker, flusher)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        parents[int(stat.parent.name)] = ppid
        names[int(stat.parent.name)] = cmd
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        cmd = names.get(p, "")
        out[p] = (
            "flusher"
            if "cli flusher" in cmd
            else "serve"
            if p == pid
            else "worker"
            if "multiprocessing" in cmd
            else cmd.split(" ")[0].rsplit("/", 1)[-1]
        )
        todo += [c for c, pp in parents.items() if pp == p]
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=int, default=1000, help="debits/s asked of wrk")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--every", type=float, default=15, help="seconds between samples")
    args = parser.parse_args()
    pg, rd = PrivatePostgres(), PrivateRedis()
    pg.start()
    rd.start()
    database = f"{pg.server}/soak"
    samples: list[dict[str, object]] = []
    try:
        asyncio.run(prepare_database(database, USERS))
        gateway = GatewayProcess(
            {
                "METERING_DATABASE_URL": database,
                "METERING_REDIS_URL": rd.url,
                "METERING_ADMIN_KEY": ADMIN,
                "METERING_RENEW_CRON": "off",
            },
            workers=args.workers,
        )
        gateway.start()
        assert gateway.proc is not None
        seconds = int(args.minutes * 60)
        env = {
            **os.environ,
            "KEY": ADMIN,
            "USERS": str(USERS),
            "PREFIX": "bench",
            "RATE": str(args.rate),
            "CONNS": str(args.connections),
        }
        url = f"{gateway.url}/api/v1/credits/debit"
        load = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{seconds}s", "-s", str(LUA), url],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        r = redis_sync.Redis.from_url(rd.url)
        start = time.monotonic()
        print(f"soak: {args.minutes} min at {args.rate} debits/s asked, {args.workers} workers")
        while load.poll() is None:
            procs = tree(gateway.proc.pid)
            sample = {
                "t": round(time.monotonic() - start),
                "rss_mib": {f"{name} {pid}": round(rss_mib(pid), 1) for pid, name in procs.items()},
                "redis_used_mib": round(int(r.info("memory")["used_memory"]) / 2**20, 1),
            }
            samples.append(sample)
            print(json.dumps(sample), flush=True)
            time.sleep(args.every)
        out = load.communicate()[0]
        summary = next((line for line in out.splitlines() if line.startswith("BENCH")), out)
        print(summary)
        gateway.stop()
    finally:
        rd.close()
        pg.close()
    warm = next((s for s in samples if int(s["t"]) >= 60), samples[0])  # type: ignore[call-overload]
    last = samples[-1]
    print("resident memory (MiB) after the first minute -> at the end:")
    for name, end in last["rss_mib"].items():  # type: ignore[attr-defined]
        begin = warm["rss_mib"].get(name)  # type: ignore[attr-defined]
        print(f"  {name:<16} {begin} -> {end}")
    report = {"settings": vars(args), "wrk": summary, "samples": samples}
    path = ROOT.parent / "build" / "soak.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
