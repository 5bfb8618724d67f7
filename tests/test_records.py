"""Idempotency records (gateway/credits/lua/lib.lua): replays give back the first answer's ids,
a record answers for one to two windows on Redis's clock, and records stay small enough for
Redis to keep a bucket as a listpack. Scripts alone, on fakeredis and the real Redis."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis as redis_sync

from gateway.credits.ids import new_id
from gateway.credits.keys import Keys
from gateway.credits.records import record_arg
from gateway.credits.schemas import fingerprint
from gateway.credits.scripts import source
from tests.conftest import REDIS_URL
from tests.test_scripts import hydrate


def debit(
    r: Any, k: Keys, user: str, rid: str, amount: int, txn: str, ttl: int = 60, body: str = "b"
) -> list[str]:
    bucket, field = k.record(user, rid)
    rec = record_arg(field, fingerprint(body), txn)
    return list(
        r.register_script(source("apply"))(
            keys=[k.user(user), bucket, k.user_stream(user), k.holds(user)],
            args=[user, 0, "month", new_id(), -amount, rec, txn, ttl, rid, "usage", ""],
        )
    )


def reserve(r: Any, k: Keys, user: str, rid: str, amount: int) -> list[str]:
    bucket, field = k.record(user, rid)
    res = k.new_reservation_id(user)
    rec = record_arg(field, fingerprint("reserve", amount), res)
    return list(
        r.register_script(source("reserve"))(
            keys=[k.user(user), bucket, k.holds(user), k.reservation(res), k.user_stream(user)],
            args=[user, 0, "month", new_id(), amount, rec, res, 60, 30_000, rid, 60],
        )
    )


@pytest.fixture
def k() -> Keys:
    return Keys(f"ts{uuid.uuid4().hex[:8]}", 4, buckets=3)


def test_a_replay_gives_back_the_first_answers_ids_and_amounts(r: Any, k: Keys) -> None:
    hydrate(r, k, "u", 10_000_000)
    first = debit(r, k, "u", "a", 1_234_567, txn := new_id())
    assert first == ["ok", txn, "-1234567", "8765433"]
    assert debit(r, k, "u", "a", 1_234_567, new_id()) == ["replay", txn, "-1234567", "8765433"]
    assert debit(r, k, "u", "a", 7, new_id(), body="other") == ["conflict"]
    held = reserve(r, k, "u", "h", 500_000)
    assert held[0] == "ok" and held[1].startswith("rv")
    again = reserve(r, k, "u", "h", 500_000)
    assert again[:4] == ["replay", held[1], "500000", "8265433"]
    # a transaction id that is no UUID is kept as text
    assert debit(r, k, "u", "t", 1, "not-a-uuid") == ["ok", "not-a-uuid", "-1", "8265432"]
    assert debit(r, k, "u", "t", 1, new_id()) == ["replay", "not-a-uuid", "-1", "8265432"]


def test_a_record_answers_for_one_to_two_windows_of_redis_time(r: Any, k: Keys) -> None:
    """Slices as long as the window (1 s here), on Redis's clock: a retry in the next slice is
    still a replay, two slices on it is a new request."""
    hydrate(r, k, "u", 10_000_000)
    now = float(r.time()[0]) + float(r.time()[1]) / 1e6
    time.sleep(1.05 - now % 1)  # the start of a slice
    txn = new_id()
    assert debit(r, k, "u", "w", 1, txn, ttl=1)[0] == "ok"
    time.sleep(1.0)  # the next slice: the record is in the one before
    assert debit(r, k, "u", "w", 1, new_id(), ttl=1)[:2] == ["replay", txn]
    time.sleep(1.0)  # two slices on: forgotten
    assert debit(r, k, "u", "w", 1, new_id(), ttl=1)[0] == "ok"


def test_records_are_32_bytes_and_a_full_bucket_stays_a_listpack(r: Any) -> None:
    if "fake" in type(r).__module__:
        pytest.skip("encodings are the real Redis's")
    k = Keys(f"ts{uuid.uuid4().hex[:8]}", 1, buckets=1)
    hydrate(r, k, "u", 10**12)
    for i in range(100):
        assert debit(r, k, "u", f"r{i}", 10**9 + i, new_id())[0] == "ok"
    (bucket,) = r.keys(f"{k.prefix}:*:i:*")
    assert r.hlen(bucket) == 100
    assert r.object("encoding", bucket) == "listpack"
    assert r.ttl(bucket) > 60  # the slice's end plus a window
    raw = redis_sync.Redis.from_url(REDIS_URL)  # fields and values are binary
    assert {len(v) for v in raw.hvals(bucket)} == {32}
    assert {len(f) for f in raw.hkeys(bucket)} == {7}
    raw.close()
