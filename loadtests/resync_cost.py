"""What a resync costs Redis as the shard's backlog grows: resync.lua reads the user's shard
stream past the last entry flushed (gateway/flusher/resync.py), so its time grows with the
unflushed events of that shard. Prints the script's time (Redis's own, from SLOWLOG) for a
backlog of 1,000 to 100,000 events on a private redis-server. Measures; asserts nothing.

    python -m loadtests.resync_cost [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse

import redis

from gateway.credits.ids import new_id
from gateway.credits.keys import Keys
from gateway.credits.scripts import source
from loadtests.servers import PrivateRedis
from persistence.events import FIELDS, SEP


def line(user: str, amount: int) -> str:
    values = dict.fromkeys(FIELDS, "")
    values.update(t="usage", u=user, tx=new_id(), rid=new_id(), amt=str(amount), ver="1")
    return SEP.join(values[f] for f in FIELDS)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.resync_cost")
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()
    keys = Keys("m", 1)
    server = PrivateRedis()
    server.start()
    try:
        r = redis.Redis(port=server.port, decode_responses=True)
        sha = r.script_load(source("resync"))
        r.config_set("slowlog-log-slower-than", 0)
        print("backlog (events in the shard) | resync.lua, Redis time | per event")
        for size in (int(s) for s in args.sizes.split(",")):
            r.flushall()
            user = "u"
            r.hset(keys.user(user), mapping={"bal": 5_000_000, "ver": 10, "alloc": 5_000_000})
            stream = keys.user_stream(user)
            with r.pipeline(transaction=False) as pipe:
                for i in range(size):  # one event in ten is the user's
                    pipe.xadd(stream, {"e": line(user if i % 10 == 0 else f"o{i}", -1)})
                pipe.execute()
            r.slowlog_reset()
            args_ = [user, 0, "month", new_id(), 4_000_000, 12, "0-0", "measure", "bench"]
            r.evalsha(sha, 2, keys.user(user), stream, *args_)
            log = r.slowlog_get(10)
            took = next(e["duration"] for e in log if b"EVALSHA" in bytes(e["command"])[:8])
            print(f"{size:>29,} | {took / 1000:>18.1f} ms | {took / size * 1000:6.0f} ns")
        r.close()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
