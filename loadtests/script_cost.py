"""What one debit costs inside Redis, by how many credit blocks the user holds, beside the naive
baseline's one-line script in the same run (INFO commandstats usec_per_call: Redis's own time,
no client or network). Prints microseconds per call, the best of five rounds of 5000 pipelined
calls each.

    python -m loadtests.script_cost [--redis redis://127.0.0.1:6379/9]
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from gateway.credits.clock import epoch_ms, period_start
from gateway.credits.ids import new_id
from gateway.credits.keys import Keys
from gateway.credits.records import record_arg
from gateway.credits.scripts import source
from loadtests.baselines.naive import DECREMENT

CALLS, ROUNDS = 5000, 5


def per_call(
    r: redis.Redis,
    sha: str,
    keys: list[str],
    args: list[object],
    rid_at: int,
    record: Callable[[str], tuple[str, bytes]] | None = None,
) -> float:
    """Best usec_per_call of EVALSHA over the rounds; args[rid_at] gets a fresh request id and,
    with record, keys[1] and args[5] its idempotency bucket and record (apply.lua)."""
    best = float("inf")
    for n in range(ROUNDS):
        pipe = r.pipeline(transaction=False)
        for i in range(CALLS):
            rid = f"{n}-{i}"
            call_keys = [k.replace("RID", rid) for k in keys]
            call_args = [rid if j == rid_at else a for j, a in enumerate(args)]
            if record is not None:
                call_keys[1], call_args[5] = record(rid)
            pipe.evalsha(sha, len(call_keys), *call_keys, *call_args)
        r.config_resetstat()
        pipe.execute()
        best = min(best, float(r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]))
    return best


def blocks(n: int, total: int) -> str:
    """n blocks (an allocation, then purchases) in the 'blks' text lib.lua keeps."""
    kinds = ["allocation:10"] + ["purchase:30"] * (n - 1)
    each = total // n
    return ",".join(f"{each}:b{i:03d}:{kind}:0:{i}:{each}" for i, kind in enumerate(kinds))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.script_cost", description=__doc__)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    r = redis.Redis.from_url(parser.parse_args().redis, decode_responses=True)
    prefix = f"cost{uuid.uuid4().hex[:6]}"
    try:
        naive = r.script_load(DECREMENT)
        r.set(f"{prefix}:naive", 10**12)
        base = per_call(r, naive, [f"{prefix}:naive"], [1], -1)
        print(f"naive baseline (DECRBY script): {base:6.2f} us per call")
        apply, hydrate = r.script_load(source("apply")), r.register_script(source("hydrate"))
        began = period_start(datetime.now(UTC))
        k = Keys(prefix, 1, 4096)  # records spread as at the planned rate: a few a bucket

        def record(rid: str, txn: str) -> tuple[str, bytes]:
            bucket, field = k.record("u", rid)
            return bucket, record_arg(field, "00000000", txn)

        for n in (1, 3, 20):
            user = f"{prefix}:u{n}"
            row = [10**12, 10**12, "t", "", began.isoformat(), 0, int(began.timestamp()), 0, 0]
            hydrate(keys=[user], args=[*row, epoch_ms(began), blocks(n, 10**12), 0])
            keys = [user, "", f"{prefix}:s", f"{prefix}:h{n}"]
            txn = new_id()
            args: list[object] = ["u", 0, "month", "renew", -1, b"", txn, 3600, "RID", "usage", ""]
            cost = per_call(r, apply, keys, args, 8, lambda rid, t=txn: record(rid, t))
            print(f"debit, {n:2d} block(s):           {cost:6.2f} us per call ({cost / base:.1f}x)")
    finally:
        for key in r.scan_iter(f"{prefix}*", count=1000):
            r.delete(key)
        r.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
