"""The Lua scripts alone: quick checks on fakeredis (Lua) and a thread storm on real Redis."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
import redis as redis_sync

from gateway.credits.clock import Period, epoch_ms, period_end, period_start
from gateway.credits.keys import Keys
from gateway.credits.money import MAX_MICRO
from gateway.credits.records import record_arg
from gateway.credits.schemas import fingerprint
from gateway.credits.scripts import source
from persistence.events import FIELDS, fields, line_of
from tests.conftest import REDIS_URL


@pytest.fixture
def k() -> Keys:
    return Keys(f"ts{uuid.uuid4().hex[:8]}", 4)


# The scripts read the time from Redis (TIME) and add the header's offset: the current month
# (on the real clock), and an offset that reaches the next one.
_START = period_start(datetime.now(UTC))
PERIOD = int(_START.timestamp())
PERIOD_ISO = _START.isoformat()
NEXT_MONTH = epoch_ms(period_end(_START)) - epoch_ms(datetime.now(UTC)) + 3_600_000


def hydrate(r: Any, k: Keys, user: str, bal: int, ver: int = 0, cap: str = "") -> int:
    return int(
        r.register_script(source("hydrate"))(
            keys=[k.user(user)],
            args=[bal, bal, "trial", cap, PERIOD_ISO, ver, PERIOD, 0, 0, PERIOD * 1000],
        )
    )


def rec(k: Keys, user: str, rid: str, fp: str, txn: str) -> bytes:
    """The idempotency record argument of a request (records.record_arg), body fp."""
    return record_arg(k.record(user, rid)[1], fingerprint(fp), txn)


def record(r: Any, k: Keys, user: str, rid: str) -> str | None:
    """The fingerprint Redis remembers for a request (record.lua), None when it has none."""
    bucket, field = k.record(user, rid)
    found = r.register_script(source("record"))(
        keys=[bucket], args=[user, 0, "month", "", field, 60, "0"]
    )
    return None if found is None else str(found)


def record_count(r: Any, k: Keys) -> int:
    return sum(int(r.hlen(key)) for key in r.keys(f"{k.prefix}:*:i:*"))


def apply(
    r: Any, k: Keys, user: str, delta: int, rid: str, fp: str = "fp", offset: int = 0
) -> list[str]:
    script = r.register_script(source("apply"))
    header = [user, offset, "month", f"renew-{rid}"]
    return list(
        script(
            keys=[k.user(user), k.request(user, rid), k.user_stream(user)],
            args=[
                *header,
                delta,
                rec(k, user, rid, fp, f"tx-{rid}"),
                f"tx-{rid}",
                60,
                rid,
                "usage",
                "",
            ],
        )
    )


def test_miss_then_hydrate_then_debit(r: Any, k: Keys) -> None:
    status, now = apply(r, k, "u", -1, "a")
    assert status == "miss" and abs(int(now) - time.time() * 1000) < 60_000  # Redis's clock
    assert r.xlen(k.user_stream("u")) == 0
    assert hydrate(r, k, "u", 10) == 1
    assert hydrate(r, k, "u", 999) == 0  # never overwrites
    assert apply(r, k, "u", -4, "a") == ["ok", "tx-a", "-4", "6"]
    assert apply(r, k, "u", -4, "a") == ["replay", "tx-a", "-4", "6"]
    assert apply(r, k, "u", -5, "a", fp="other") == ["conflict"]
    assert apply(r, k, "u", -7, "b") == ["nsf", "6"]
    assert apply(r, k, "u", -6, "c") == ["ok", "tx-c", "-6", "0"]
    events = [fields(line_of(f)) for _, f in r.xrange(k.user_stream("u"))]
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
    # a new period: the allocation block renews (its unused 4 expire, 10 again), the granted 5
    # stay, spending back to 0
    assert apply(r, k, "c", -1, "d", offset=NEXT_MONTH) == ["ok", "tx-d", "-1", "14"]
    assert apply(r, k, "c", -1, "e", offset=NEXT_MONTH)[3] == "13"  # renewed once only
    assert apply(r, k, "c", -1, "f")[3] == "12"  # an older clock never renews
    types = [fields(line_of(f))["t"] for _, f in r.xrange(k.user_stream("c"))]
    assert types == ["usage", "usage", "usage", "monthly_reset", "usage", "usage", "usage"]


def untimed(state: dict[str, str]) -> dict[str, str]:
    """A user hash with its credit blocks' creation times (Redis's time when made) blanked."""
    return {f: re.sub(r":[0-9]{13}(:[0-9]+)?(,|$)", r":T\1\2", v) for f, v in state.items()}


def test_apply_many_answers_and_writes_exactly_what_apply_does_one_by_one(r: Any) -> None:
    """The same items through apply.lua one call each and through one apply_many.lua call, on
    two key prefixes: the same answers, user states, idempotency records and ledger events."""
    # user, delta, request id, body fingerprint, extra event fields
    items: list[tuple[str, int, str, str, list[str]]] = [
        ("u1", -4, "a", "fp", ["model", "m"]),
        ("u1", -4, "a", "fp", ["model", "m"]),  # replay
        ("u1", -5, "a", "other", []),  # conflict
        ("u1", -7, "b", "fp", []),  # nsf
        ("ü 2", -2, "c", "fp", []),
        ("ü 2", -2, "d", "fp", []),  # cap (3)
        (
            "old",
            -1,
            "e",
            "fp",
            ["tin", "5", "tout", "7", "meta", '{"k":"\u00e9"}'],
        ),  # renews first: an older period
        ("old", -1, "f", "fp", []),  # renewed once only
        ("nobody", -1, "g", "fp", []),  # miss
        ("u1", MAX_MICRO, "h", "fp", []),  # overflow
        ("u1", 3, "i", "fp", []),  # a grant
        ("u1", -9, "j", "fp", []),
    ]
    one, many = Keys(f"ts{uuid.uuid4().hex[:8]}", 1), Keys(f"ts{uuid.uuid4().hex[:8]}", 1)
    for k in (one, many):
        hydrate(r, k, "u1", 10)
        hydrate(r, k, "ü 2", 5, cap="3")
        r.register_script(source("hydrate"))(
            keys=[k.user("old")],
            args=[4, 6, "trial", "", PERIOD_ISO, 0, PERIOD - 86_400, 0, 0, 0],
        )
    single = r.register_script(source("apply"))
    header = (0, "month")
    answers_one = [
        list(
            single(
                keys=[one.user(u), one.request(u, rid), one.user_stream(u), one.holds(u)],
                args=[
                    *(u, *header, f"renew-{rid}", d, rec(one, u, rid, fp, f"tx-{rid}")),
                    *(f"tx-{rid}", 60, rid, "usage", "", *extra),
                ],
            )
        )
        for u, d, rid, fp, extra in items
    ]
    keys, batch, recs = [many.stream(0)], [], b""
    for u, d, rid, fp, extra in items:
        keys += [many.user(u), many.request(u, rid), many.holds(u)]
        batch.append([u, f"renew-{rid}", str(d), f"tx-{rid}", rid, extra])
        recs += rec(many, u, rid, fp, f"tx-{rid}")
    args = ["", 0, "month", "", 60, "usage", json.dumps(batch), recs]
    answers_many = [list(a) for a in r.register_script(source("apply_many"))(keys=keys, args=args)]

    for answers in (answers_one, answers_many):  # a miss carries the time: alike, not equal
        assert answers[8][0] == "miss" and abs(int(answers[8].pop()) - time.time() * 1000) < 60_000
    assert answers_many == answers_one
    assert [a[0] for a in answers_one] == [
        *("ok", "replay", "conflict", "nsf", "ok", "cap", "ok", "ok", "miss", "overflow"),
        *("ok", "ok"),
    ]
    for u in ("u1", "ü 2", "old", "nobody"):
        assert untimed(r.hgetall(many.user(u))) == untimed(r.hgetall(one.user(u)))
    for u, _, rid, _, _ in items:
        assert record(r, many, u, rid) == record(r, one, u, rid)
    assert record_count(r, many) == record_count(r, one) == 6  # the ok ones
    events = [[fields(line_of(f)) for _, f in r.xrange(k.stream(0))] for k in (one, many)]
    for e in (*events[0], *events[1]):
        assert abs(int(e.pop("ts")) - time.time() * 1000) < 60_000  # Redis's time, now
        e["blk"] = untimed({"b": e["blk"]})["b"]  # blocks made now
    assert events[1] == events[0]
    assert [e["t"] for e in events[0]] == [
        *("usage", "usage", "monthly_reset", "usage", "usage", "usage", "usage"),
    ]


def test_event_positions_in_lua_match_the_python_field_list() -> None:
    """emit() in lib.lua places optional values by position; persistence/events.py reads them
    by the same positions."""
    lib = source("lib")
    table = re.search(r"local EVENT_POS = \{(.*?)\}", lib, re.DOTALL)
    assert table is not None
    positions = {name: int(pos) for name, pos in re.findall(r"(\w+) = (\d+)", table.group(1))}
    assert positions == {name: FIELDS.index(name) + 1 for name in FIELDS[9:]}
    blanks = re.search(r"local ev = \{.*?\}", lib, re.DOTALL)
    assert blanks is not None and blanks.group(0).count("''") == len(FIELDS) - 9


# Instants around the boundaries the calendar has: month and year ends, leap days (2028, a
# century that is not leap, one that is), a Sunday night into an ISO week, the epoch.
INSTANTS = [
    datetime(2028, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),
    datetime(2028, 3, 1, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(2027, 1, 1, tzinfo=UTC),
    datetime(2100, 3, 1, 0, 0, 0, 1000, tzinfo=UTC),
    datetime(2000, 2, 29, 12, 30, 5, 250000, tzinfo=UTC),
    datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC),  # a Sunday
    datetime(2026, 11, 30, tzinfo=UTC),  # the Monday after
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
]


@pytest.mark.parametrize("kind", ["month", "week", "day"])
def test_lua_periods_and_times_agree_with_python(r: Any, kind: Period) -> None:
    """The scripts find the period on Redis's clock themselves: their calendar must be the one
    gateway/credits/clock.py uses (and PostgreSQL reads their ISO text)."""
    probe = r.register_script(
        source("lib") + "\nlocal s = period_of(tonumber(ARGV[5]), ARGV[6])\n"
        "return {int(s), iso(s * 1000), iso(tonumber(ARGV[5]))}"
    )
    for t in INSTANTS:
        start, start_iso, now_iso = probe(keys=[], args=["", 0, kind, "", epoch_ms(t), kind])
        assert int(start) == int(period_start(t, kind).timestamp()), t
        assert start_iso == period_start(t, kind).isoformat()
        assert now_iso == t.isoformat(), t
