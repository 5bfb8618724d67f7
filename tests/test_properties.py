"""Property tests on real Redis and PostgreSQL through a real gateway process: random
interleavings of debit, grant, reservation, commit, release, refund and retries keep the
invariants. Per user: balance = allocation + grants + refunds - charges (from the answers the
clients got); each request_id is applied once; no 5xx; no negative balance; after a flush
PostgreSQL = Redis = ledger."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from redis.asyncio import Redis

from gateway.credits.keys import Keys
from persistence import db
from tests.conftest import ADMIN_KEY, REDIS_URL
from tests.processes import gateway_process

USERS = ["a", "b"]
amounts = st.sampled_from(["0.1", "0.25", "0.5", "1", "2.5", "4"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("debit"), st.sampled_from(USERS), amounts),
        st.tuples(st.just("grant"), st.sampled_from(USERS), amounts),
        st.tuples(st.just("reserve"), st.sampled_from(USERS), amounts),
        st.tuples(st.just("commit"), st.integers(0, 5), amounts),
        st.tuples(st.just("release"), st.integers(0, 5), st.just("")),
        st.tuples(st.just("refund"), st.integers(0, 5), st.one_of(st.just(""), amounts)),
        st.tuples(st.just("retry"), st.integers(0, 30), st.just("")),
    ),
    min_size=10,
    max_size=40,
)


@pytest.fixture(scope="module")
def gw() -> Iterator[tuple[str, str, str]]:
    with gateway_process(METERING_FLUSH_INTERVAL="0") as running:
        yield running.url, running.database, running.prefix


RUN = itertools.count()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_random_interleavings_keep_the_books(gw: tuple[str, str, str], ops: list[Any]) -> None:
    url, database, prefix = gw
    run = next(RUN)
    expected = {u: Decimal(5) for u in USERS}  # the trial allocation
    sent: list[tuple[str, str, dict[str, Any]]] = []  # (method, path, body) for retries
    reservations: list[str] = []
    debits: list[tuple[str, str]] = []  # (user, transaction id)
    applied: dict[str, int] = {}  # request id -> times answered as new

    def user(u: str) -> str:
        return f"p{run}-{u}"

    def account(path: str, body: dict[str, Any], r: httpx.Response) -> None:
        assert r.status_code < 500, (path, body, r.text)
        if r.status_code != 200 and r.status_code != 201:
            return
        out = r.json()
        if out.get("replayed"):
            return
        rid = body.get("request_id")
        if rid:
            applied[f"{out.get('user_id')}|{rid}"] = (
                applied.get(f"{out.get('user_id')}|{rid}", 0) + 1
            )
        u = out["user_id"].split("-", 1)[1]
        if path.endswith("/debit"):
            expected[u] -= Decimal(out["charged"])
            debits.append((out["user_id"], out["transaction_id"]))
        elif path.endswith("/grant"):
            expected[u] += Decimal(out["granted"])
        elif path.endswith("/refund"):
            expected[u] += Decimal(out["refunded"])
        elif path.endswith("/commit"):
            expected[u] -= Decimal(out["charged"])
        elif path.endswith("/reservations/"):
            reservations.append(out["reservation_id"])

    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    ) as c:
        for n, (op, arg, amount) in enumerate(ops):
            rid = f"r{n}"
            if op == "retry":
                if not sent:
                    continue
                method, path, body = sent[arg % len(sent)]
            elif op in ("debit", "grant"):
                method, path = "POST", f"/api/v1/credits/{op}"
                body = {"user_id": user(arg), "amount": amount, "request_id": rid}
            elif op == "reserve":
                method, path = "POST", "/api/v1/credits/reservations/"
                body = {"user_id": user(arg), "amount": amount, "request_id": rid}
            elif op in ("commit", "release"):
                if not reservations:
                    continue
                res = reservations[arg % len(reservations)]
                if op == "commit":
                    method, path = "POST", f"/api/v1/credits/reservations/{res}/commit"
                    body = {"amount": amount}
                else:
                    method, path, body = "DELETE", f"/api/v1/credits/reservations/{res}", {}
            else:  # refund
                if not debits:
                    continue
                owner, txn = debits[arg % len(debits)]
                method, path = "POST", "/api/v1/credits/refund"
                body = {"user_id": owner, "transaction_id": txn, "request_id": rid}
                if amount:
                    body["amount"] = amount
            r = c.request(method, path, json=body or None)
            sent.append((method, path, body))
            account(path, body, r)

    assert all(n == 1 for n in applied.values()), applied

    async def check() -> None:
        from gateway.flusher.flush import Flusher
        from tests.books import assert_books_balance

        redis = Redis.from_url(REDIS_URL, decode_responses=True)
        pool = await db.open_pool(database, max_size=2)
        keys = Keys(prefix, 16)
        try:
            await Flusher(redis, pool, keys, 5000).flush()
            await assert_books_balance(pool, redis, keys)
            for u in USERS:
                bal = await redis.hget(keys.user(user(u)), "bal")
                if bal is not None:
                    assert Decimal(int(bal)) / 1_000_000 == expected[u], (u, bal, expected[u])
                    assert int(bal) >= 0
        finally:
            await redis.aclose()
            await pool.close()

    asyncio.run(check())
