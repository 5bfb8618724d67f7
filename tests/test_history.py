"""History: the ledger newest first in cursor pages, usage summaries, and the flush lag."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import pytest

from gateway.credits.clock import period_start
from gateway.credits.cursors import encode_cursor
from gateway.credits.money import to_micro
from persistence.history import report_spans
from tests.conftest import Client, FakeClock

ID = uuid.UUID(int=1)


async def spend(c: Client, user: str, n: int, **kw: object) -> None:
    for i in range(n):
        r = await c.post(
            "/api/v1/credits/debit",
            json={"user_id": user, "amount": "0.01", "request_id": f"r{i}", **kw},
        )
        assert r.status_code == 200


async def test_transactions_newest_first_in_pages(client: Client, clock: FakeClock) -> None:
    # a minute into a period, whatever the start point: 7 steps of a second stay in it
    clock.next_period(minutes=1)
    await client.get("/api/v1/credits/balance", params={"user_id": "h"})  # created now
    for i in range(7):
        # apart by more than the time between the gateway reading the fake clock and Redis
        # running the script (a loaded CI machine reordered 5 ms steps once, 100 ms steps once)
        clock.advance(seconds=1)
        r = await client.post(
            "/api/v1/credits/debit",
            json={"user_id": "h", "amount": "0.01", "request_id": f"x{i}", "metadata": {"i": i}},
        )
        assert r.status_code == 200
    pending = await client.get("/api/v1/credits/h/transactions")
    assert pending.json()["unflushed_events"] == 7
    await client.app.state.services.flusher.flush()
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/credits/h/transactions", params=params)).json()
        assert page["unflushed_events"] == 0
        seen += page["transactions"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [t["request_id"] for t in seen] == [
        "x6",
        "x5",
        "x4",
        "x3",
        "x2",
        "x1",
        "x0",
        "sys:create",
    ]
    assert seen[-2]["metadata"] == {"i": 0} and seen[-2]["amount"] == "-0.010000"
    assert seen[-1]["type"] == "allocation" and seen[-1]["amount"] == "5.000000"
    assert seen[0]["balance_after"] == "4.930000"


async def test_text_fields_reach_the_ledger_unchanged(client: Client) -> None:
    """Events travel to PostgreSQL as JSON: quotes, backslashes, non-ASCII and nesting survive."""
    rid = 'r "quoted" \\ back\\slash {}[],:'
    odd = f"naïve {rid} \u2603 🚀 \n line\ttab"
    metadata = {"note": odd, "nested": {"list": [1, "two", None]}, "empty": ""}
    r = await client.post(
        "/api/v1/credits/debit",
        json={
            "user_id": "ünï",
            "amount": "0.01",
            "request_id": rid,
            "model": 'ft:gpt-4o:org/"x"',
            "input_tokens": 0,
            "metadata": metadata,
        },
    )
    assert r.status_code == 200, r.text
    await client.app.state.services.flusher.flush()
    page = (await client.get("/api/v1/credits/ünï/transactions")).json()
    [usage] = [t for t in page["transactions"] if t["type"] == "usage"]
    assert usage["request_id"] == rid and usage["metadata"] == metadata
    assert usage["model"] == 'ft:gpt-4o:org/"x"' and usage["input_tokens"] == 0
    assert usage["output_tokens"] is None


async def test_usage_grouped_by_model_service_and_day(client: Client, clock: FakeClock) -> None:
    day0 = clock.now.date()
    await spend(client, "u", 3, model="a", input_tokens=10, metadata={"service": "chat"})
    clock.advance(days=1)
    day1 = clock.now.date()
    for i in range(2):
        await client.post(
            "/api/v1/credits/debit",
            json={
                "user_id": "u",
                "amount": "0.5",
                "request_id": f"b{i}",
                "model": "b",
                "output_tokens": 7,
                "metadata": {"service": "embed"},
            },
        )
    plain = {"user_id": "u", "amount": "0.25", "request_id": "no-model"}  # no model, no service
    assert (await client.post("/api/v1/credits/debit", json=plain)).status_code == 200
    await client.app.state.services.flusher.flush()
    both_days = {"from": day0.isoformat(), "to": (day1 + timedelta(days=1)).isoformat()}
    by_model = (await client.get("/api/v1/credits/u/usage", params=both_days)).json()
    assert [
        (g["key"], g["requests"], g["credits"], g["input_tokens"], g["output_tokens"])
        for g in by_model["groups"]
    ] == [("a", 3, "0.030000", 30, 0), ("b", 2, "1.000000", 0, 14), (None, 1, "0.250000", 0, 0)]
    assert by_model["total_credits"] == "1.280000" and by_model["total_requests"] == 6
    current = (await client.get("/api/v1/credits/u/usage")).json()  # by default: this period
    assert current["start"] == period_start(clock.now).isoformat()
    by_service = await client.get(
        "/api/v1/credits/u/usage", params={"group_by": "service", **both_days}
    )
    assert [g["key"] for g in by_service.json()["groups"]] == ["chat", "embed", None]
    by_day = await client.get(
        "/api/v1/credits/u/usage",
        params={"group_by": "day", "from": day1.isoformat(), "to": both_days["to"]},
    )
    assert [(g["key"], g["requests"]) for g in by_day.json()["groups"]] == [(day1.isoformat(), 3)]


@pytest.mark.parametrize(
    "params",
    [
        {"group_by": "week"},
        {"from": "yesterday"},
        {"from": "2026-12-01", "to": "2026-11-01"},
        {"limit": 0},
        {"limit": 501},
        {"cursor": "!!!"},
        # issue 12: times Python or PostgreSQL cannot take to UTC were a 500
        {"from": "9999-12-31T23:00:00-05:00"},
        {"to": "0001-01-01T00:30:00+14:00"},
        {"from": "0001-01-01", "to": "2026-01-01"},
        {
            "cursor": encode_cursor(
                datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=5))), ID
            )
        },
        {"cursor": encode_cursor(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))), ID)},
        {"cursor": encode_cursor(datetime(2026, 1, 1), ID)},  # no time zone
    ],
)
async def test_bad_history_queries_are_400(client: Client, params: dict[str, object]) -> None:
    await spend(client, "q", 1)
    path = "transactions" if {"limit", "cursor"} & set(params) else "usage"
    r = await client.get(f"/api/v1/credits/q/{path}", params=params)
    assert r.status_code == 400, r.text
    if "cursor" in params:  # the audit log's pages too
        r = await client.get("/api/v1/audit", params=params)
        assert r.status_code == 400, r.text


async def test_metadata_stored_before_it_was_bounded_does_not_break_history(
    client: Client, pool: asyncpg.Pool
) -> None:
    """Depth 980 was accepted once and made every GET of the user's transactions a 500."""
    await spend(client, "old", 1)
    await client.app.state.services.flusher.flush()
    deep = '{"a":' * 980 + "1" + "}" * 980
    await pool.execute(
        "UPDATE credit_transactions SET metadata = $1::jsonb WHERE user_id = 'old'", deep
    )
    r = await client.get("/api/v1/credits/old/transactions")
    assert r.status_code == 200, r.text
    meta = [t["metadata"] for t in r.json()["transactions"] if t["type"] == "usage"]
    assert meta == [{"unreadable": "this metadata nests more than 32 levels"}]


async def test_unknown_user_history_is_404(client: Client) -> None:
    assert (await client.get("/api/v1/credits/ghost/transactions")).status_code == 404
    assert (await client.get("/api/v1/credits/ghost/usage")).status_code == 404


# minutes after the first debit: inside an hour, on an hour's edge, hours and a day apart
DEBIT_MINUTES = [0, 17, 43, 61, 125, 179, 180, 330, 1441, 1500, 2900, 4400]


async def test_usage_windows_that_cut_hours_sum_the_ledger_exactly(
    client: Client, clock: FakeClock
) -> None:
    """Whole days and hours come from the flusher's summaries, the window's ends from the
    ledger's rows (migration 0015): any window, aligned or not, in any time zone, sums the
    ledger (75 h windows hold whole UTC days wherever the clock starts)."""
    await client.get("/api/v1/credits/balance", params={"user_id": "w"})
    t0 = clock.now
    for i, minutes in enumerate(DEBIT_MINUTES):
        clock.now = t0 + timedelta(minutes=minutes)
        r = await client.post(
            "/api/v1/credits/debit",
            json={
                "user_id": "w",
                "amount": f"0.00{i + 1}",
                "request_id": f"w{i}",
                "model": "ab"[i % 2],
                "input_tokens": i,
                "metadata": {"service": f"s{i % 3}"},
            },
        )
        assert r.status_code == 200, r.text
    await client.app.state.services.flusher.flush()
    page = (await client.get("/api/v1/credits/w/transactions", params={"limit": 50})).json()
    rows = [t for t in page["transactions"] if t["type"] == "usage"]
    assert len(rows) == len(DEBIT_MINUTES)
    east = timezone(timedelta(hours=5, minutes=30))
    for start_min, end_min in [
        (-5, 2000),
        (0, 61),
        (1, 60),
        (16, 44),
        (17, 180),
        (59, 181),
        (44, 61),
        (60, 120),
        (121, 1442),
        (179, 1441),
        (-60, 0),
    ]:
        start, end = t0 + timedelta(minutes=start_min), t0 + timedelta(minutes=end_min)
        for zone in (UTC, east):
            window = {
                "from": start.astimezone(zone).isoformat(),
                "to": end.astimezone(zone).isoformat(),
            }
            inside = [t for t in rows if start <= datetime.fromisoformat(t["created_at"]) < end]
            for group_by, key in [
                ("model", lambda t: t["model"]),
                ("service", lambda t: t["metadata"]["service"]),
                ("day", lambda t: datetime.fromisoformat(t["created_at"]).date().isoformat()),
            ]:
                r = await client.get(
                    "/api/v1/credits/w/usage", params={"group_by": group_by, **window}
                )
                assert r.status_code == 200, r.text
                expected: dict[str, tuple[int, int, int]] = {}
                for t in inside:
                    n, micro, tokens = expected.get(key(t), (0, 0, 0))
                    expected[key(t)] = (
                        n + 1,
                        micro - to_micro(Decimal(t["amount"])),
                        tokens + t["input_tokens"],
                    )
                got = {
                    g["key"]: (g["requests"], to_micro(Decimal(g["credits"])), g["input_tokens"])
                    for g in r.json()["groups"]
                }
                assert got == expected, (group_by, start_min, end_min, zone)


@pytest.mark.parametrize("minutes", [0, 1, 59, 60, 61, 1439, 1440, 1441, 2881, 44641])
@pytest.mark.parametrize("offset_s", [0, 1, 59, 3599, 3600, 43200, 86399])
def test_report_spans_cut_a_window_into_parts_that_cover_it_once(
    minutes: int, offset_s: int
) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(seconds=offset_s)
    end = start + timedelta(minutes=minutes, seconds=offset_s % 7)
    t0, h0, d0, d1, h1, t1 = bounds = report_spans(start, end)
    assert (t0, t1) == (start, end) and list(bounds) == sorted(bounds)
    whole_hours = [h0, h1] if h0 < h1 else []
    whole_days = [d0, d1] if d0 < d1 else []
    assert all(t.minute == t.second == t.microsecond == 0 for t in whole_hours + whole_days)
    assert all(t.hour == 0 for t in whole_days)
    # every whole hour inside the window is summed from the summaries, nothing else is
    hour = start.replace(minute=0, second=0, microsecond=0)
    while hour < end:
        whole = start <= hour and hour + timedelta(hours=1) <= end
        assert whole == (h0 <= hour < h1), hour
        hour += timedelta(hours=1)
    if d0 < d1:
        assert start <= d0 and d1 <= end and (d1 - d0) % timedelta(days=1) == timedelta(0)
    # what is summed from rows is under an hour at each end (under two hours in all when the
    # window holds no whole hour); from hour summaries, under a day at each end
    if h0 < h1:
        assert h0 - start < timedelta(hours=1) and end - h1 < timedelta(hours=1)
    else:
        assert end - start < timedelta(hours=2)
    if d0 < d1:
        assert d0 - h0 < timedelta(days=1) and h1 - d1 < timedelta(days=1)
    else:
        assert h1 - h0 < timedelta(days=2)
