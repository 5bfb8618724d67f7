"""What Redis spends per remembered request id, the layout the gateway uses against one string
key per record (the layout before it, written the same way in the same run as the baseline).

On a private redis-server with Redis's default `hash-max-listpack-entries 128`, users debit
through the real apply.lua; the records' memory is what `used_memory` gives back when their keys
are deleted (so the users, the streams and the scripts are not counted). The buckets are laid
out as the settings would for a planned rate over a window (gateway/base/settings.py
record_buckets); the run fills a window at several fractions of that rate, since a bucket's
fill, not the window's length, decides the cost per record. Measures; asserts nothing.

    python -m loadtests.idempotency_memory [--records 360000] [--fills 0.1,0.5,1,2]
"""

from __future__ import annotations

import argparse
import time
import uuid

import redis

from gateway.base.settings import Settings, record_buckets
from gateway.credits.ids import new_id
from gateway.credits.keys import Keys
from gateway.credits.records import record_arg
from gateway.credits.schemas import fingerprint
from gateway.credits.scripts import source
from loadtests.servers import PrivateRedis

USERS = 2000
WINDOW = 3600  # the slice is the window: an hour keeps a run inside one slice


def records_memory(r: redis.Redis, pattern: str) -> int:
    """Bytes Redis gives back when the keys matching pattern are deleted."""
    before = int(r.info("memory")["used_memory"])
    names = list(r.scan_iter(match=pattern, count=5000))
    for i in range(0, len(names), 5000):
        r.delete(*names[i : i + 5000])
    return before - int(r.info("memory")["used_memory"])


def new_layout(r: redis.Redis, keys: Keys, n: int, apply_sha: str) -> tuple[int, int, float]:
    """n debits through apply.lua: (bytes of their records, bucket keys, share in listpacks)."""
    fp = fingerprint("debit", 100, None, 0, 0, None)
    with r.pipeline(transaction=False) as pipe:
        for i in range(n):
            user, rid, txn = f"u{i % USERS}", uuid.uuid4().hex, new_id()
            bucket, field = keys.record(user, rid)
            pipe.evalsha(
                apply_sha,
                4,
                *(keys.user(user), bucket, keys.user_stream(user), keys.holds(user)),
                *(user, 0, "month", new_id(), -100, record_arg(field, fp, txn), txn, WINDOW),
                *(rid, "usage", ""),
            )
            if len(pipe) >= 2000:
                assert all(a[0] == b"ok" for a in pipe.execute())
        assert all(a[0] == b"ok" for a in pipe.execute())
    names = list(r.scan_iter(match=f"{keys.prefix}:*:i:*", count=5000))
    packed = sum(1 for k in names if r.object("encoding", k) == b"listpack")
    return records_memory(r, f"{keys.prefix}:*:i:*"), len(names), packed / max(len(names), 1)


def old_layout(r: redis.Redis, keys: Keys, n: int) -> int:
    """n records as they were: a string key each, 'fingerprint|txn|delta|balance', EX."""
    fp = fingerprint("debit", 100, None, 0, 0, None)
    with r.pipeline(transaction=False) as pipe:
        for i in range(n):
            user = f"u{i % USERS}"
            head = f"{keys.prefix}:{{s{keys.user(user).split('{s')[1].split('}')[0]}}}"
            key = f"{head}:r:{user}:{uuid.uuid4().hex}"
            pipe.set(key, f"{fp}|{new_id()}|-100|{999_000_000 - i}", ex=WINDOW)
            if len(pipe) >= 5000:
                pipe.execute()
        pipe.execute()
    return records_memory(r, f"{keys.prefix}:*:r:*")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.idempotency_memory")
    parser.add_argument("--records", type=int, default=360_000, help="a window at the planned rate")
    parser.add_argument("--fills", default="0.1,0.5,1,2")
    args = parser.parse_args()
    rate = args.records / WINDOW
    settings = Settings(idempotency_ttl=WINDOW, idempotency_rate=max(1, round(rate)), shards=16)
    keys = Keys("m", 16, record_buckets(settings))
    server = PrivateRedis("--hash-max-listpack-entries", "128", "--hash-max-listpack-value", "64")
    server.start()
    try:
        r = redis.Redis(port=server.port)
        apply_sha = r.script_load(source("apply"))
        hydrate_sha = r.script_load(source("hydrate"))
        now = int(time.time())
        pstart = now - now % 86400
        print(f"{keys.buckets} buckets a shard x 16 shards, laid out for {args.records:,} records")
        print("fill | records | buckets | in listpacks | B/record now | B/record before")
        for fill in (float(f) for f in args.fills.split(",")):
            r.flushall()
            with r.pipeline(transaction=False) as pipe:
                for u in range(USERS):
                    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(pstart))
                    row = [10**12 - 1, 10**12 - 1, "trial", "", iso, 0, pstart, 0, 0, pstart * 1000]
                    pipe.evalsha(hydrate_sha, 1, keys.user(f"u{u}"), *row)
                pipe.execute()
            n = int(args.records * fill)
            new, buckets, packed = new_layout(r, keys, n, apply_sha)
            old = old_layout(r, keys, n)
            print(
                f"{fill:4.1f} | {n:>7,} | {buckets:>7,} | {packed:>11.0%} | "
                f"{new / n:>12.1f} | {old / n:>15.1f}"
            )
        r.close()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
