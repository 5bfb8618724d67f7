"""The Lua scripts alone: quick checks on fakeredis (Lua) and a thread storm on real Redis."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis as redis_sync

from gateway.keys import Keys
from gateway.money import MAX_MICRO
from gateway.scripts import source
from tests.conftest import REDIS_URL


@pytest.fixture(params=["fakeredis", "redis"])
def r(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "fakeredis":
        yield fakeredis.FakeRedis(decode_responses=True)
        return
    client = redis_sync.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    for key in client.scan_iter(match="ts*"):
        client.delete(key)
    client.close()


@pytest.fixture
def k() -> Keys:
    return Keys(f"ts{uuid.uuid4().hex[:8]}", 4)


PERIOD = 1_761_955_200  # 2025-11-01T00:00:00Z
PERIOD_ISO = "2025-11-01T00:00:00+00:00"


def hydrate(r: Any, k: Keys, user: str, bal: int, ver: int = 0, cap: str = "") -> int:
    return int(
        r.register_script(source("hydrate"))(
            keys=[k.user(user)],
            args=[bal, bal, "trial", cap, PERIOD_ISO, ver, PERIOD, 0, 0],
        )
    )


def apply(
    r: Any, k: Keys, user: str, delta: int, rid: str, fp: str = "fp", period: int = PERIOD
) -> list[str]:
    script = r.register_script(source("apply"))
    header = [user, 1_762_000_000_000, period, PERIOD_ISO, f"renew-{rid}"]
    return list(
        script(
            keys=[k.user(user), k.request(user, rid), k.user_stream(user)],
            args=[*header, delta, fp, f"tx-{rid}", 60, rid, "usage"],
        )
    )


def test_miss_then_hydrate_then_debit(r: Any, k: Keys) -> None:
    assert apply(r, k, "u", -1, "a") == ["miss"]
    assert r.xlen(k.user_stream("u")) == 0
    assert hydrate(r, k, "u", 10) == 1
    assert hydrate(r, k, "u", 999) == 0  # never overwrites
    assert apply(r, k, "u", -4, "a") == ["ok", "tx-a", "-4", "6"]
    assert apply(r, k, "u", -4, "a") == ["replay", "tx-a", "-4", "6"]
    assert apply(r, k, "u", -5, "a", fp="other") == ["conflict"]
    assert apply(r, k, "u", -7, "b") == ["nsf", "6"]
    assert apply(r, k, "u", -6, "c") == ["ok", "tx-c", "-6", "0"]
    events = [f for _, f in r.xrange(k.user_stream("u"))]
    assert [(e["amt"], e["bal"], e["ver"]) for e in events] == [("-4", "6", "1"), ("-6", "0", "2")]


def test_grant_overflow_is_refused(r: Any, k: Keys) -> None:
    hydrate(r, k, "g", MAX_MICRO - 5)
    assert apply(r, k, "g", 6, "x") == ["overflow", str(MAX_MICRO - 5)]
    assert apply(r, k, "g", 5, "y")[3] == str(MAX_MICRO)


def test_large_amounts_stay_exact(r: Any, k: Keys) -> None:
    hydrate(r, k, "big", MAX_MICRO)
    assert apply(r, k, "big", -1, "a")[3] == "999999999998"
    assert apply(r, k, "big", -999_999_999_997, "b")[3] == "1"


def test_100_threads_at_a_balance_for_5_on_real_redis(k: Keys) -> None:
    client = redis_sync.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        hydrate(client, k, "storm", 5)
        results: list[str] = []
        lock = threading.Lock()

        def worker(i: int) -> None:
            res = apply(client, k, "storm", -1, f"r{i}")
            with lock:
                results.append(res[0])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert Counter(results) == {"ok": 5, "nsf": 95}
        assert client.hget(k.user("storm"), "bal") == "0"
        assert client.xlen(k.user_stream("storm")) == 5
    finally:
        for key in client.scan_iter(match=f"{k.prefix}:*"):
            client.delete(key)
        client.close()


def test_cap_and_renewal_in_the_script(r: Any, k: Keys) -> None:
    hydrate(r, k, "c", 10, cap="6")
    assert apply(r, k, "c", -4, "a")[0] == "ok"
    assert apply(r, k, "c", -3, "b") == ["cap", "6", "4", "6"]  # 4 + 3 > 6
    assert apply(r, k, "c", -2, "c")[0] == "ok"  # exactly the cap
    assert apply(r, k, "c", 5, "g")[0] == "ok"  # grants do not count as spending
    # a new period: allocation back (unused credits expire), spending back to 0
    assert apply(r, k, "c", -1, "d", period=PERIOD + 1) == ["ok", "tx-d", "-1", "9"]
    assert apply(r, k, "c", -1, "e", period=PERIOD + 1)[3] == "8"  # renewed once only
    assert apply(r, k, "c", -1, "f", period=PERIOD)[3] == "7"  # an older clock never renews
    types = [f["t"] for _, f in r.xrange(k.user_stream("c"))]
    assert types == ["usage", "usage", "usage", "monthly_reset", "usage", "usage", "usage"]
