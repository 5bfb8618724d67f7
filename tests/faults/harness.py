"""Load under faults, and the books check afterwards.

Clients behave like a careful LLM proxy: each debit has its own request_id, and a 5xx or a
timeout is retried with the same request_id (idempotent) until a definite answer or a deadline.
Afterwards: every debit finally answered 200 is in the ledger exactly once, no debit finally
answered 4xx is in it, Redis = PostgreSQL = ledger for every user, no balance is negative.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
import httpx
from redis.asyncio import Redis

from gateway.base.connect import connect_redis
from gateway.credits.keys import Keys
from gateway.flusher.flush import Flusher
from gateway.ops.reconcile import reconcile
from persistence import db
from persistence.ledger import REUSED_PREFIX
from persistence.migrate import prepare


@dataclass(slots=True)
class Debit:
    user: str
    request_id: str
    first: int | None = None  # status of the first attempt (None: no answer)
    final: int | None = None  # status after retries (None: unresolved)
    txn: str | None = None
    attempts: int = 0
    first_latency: float = 0.0
    sent_at: float = 0.0  # monotonic time of the first attempt
    answered_at: float = 0.0  # monotonic time of the final answer
    server_errors: int = 0  # attempts answered 5xx other than 503 (a 500: a bug)


@dataclass(slots=True)
class Load:
    """Threads sending debits until stopped; every outcome is recorded."""

    url: str
    key: str
    users: list[str]
    threads: int = 6
    amount: str = "0.000100"
    retry_for: float = 90.0  # seconds a debit is retried with the same request_id
    timeout: float = 5.0
    debits: list[Debit] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        counter = itertools.count()
        for n in range(self.threads):
            t = threading.Thread(target=self._run, args=(n, counter), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> list[Debit]:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=self.retry_for + 30)
        return self.debits

    def _run(self, n: int, counter: itertools.count[int]) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout) as client:
            while not self._stop.is_set():
                i = next(counter)
                debit = Debit(
                    self.users[i % len(self.users)], f"load-{n}-{i}-{uuid.uuid4().hex[:6]}"
                )
                self.send(client, debit)
                with self._lock:
                    self.debits.append(debit)

    def send(self, client: httpx.Client, debit: Debit) -> None:
        deadline = time.monotonic() + self.retry_for
        body = {"user_id": debit.user, "amount": self.amount, "request_id": debit.request_id}
        while True:
            debit.attempts += 1
            start = time.monotonic()
            try:
                r = client.post("/api/v1/credits/debit", json=body)
                status: int | None = r.status_code
            except httpx.HTTPError:
                status = None
            if debit.attempts == 1:
                debit.first, debit.first_latency = status, time.monotonic() - start
                debit.sent_at = start
            if status is not None and status >= 500 and status != 503:
                debit.server_errors += 1
            if status is not None and status < 500:
                debit.final, debit.answered_at = status, time.monotonic()
                if status == 200:
                    debit.txn = r.json()["transaction_id"]
                return
            if time.monotonic() > deadline:
                return
            time.sleep(min(0.05 * debit.attempts, 1.0))


@dataclass(slots=True)
class Books:
    requests: int
    first_answers: dict[str, int]
    final_answers: dict[str, int]
    retried: int
    unresolved: int
    lost: int  # finally 200, not in the ledger
    doubled: int  # in the ledger more than once, or in it although finally refused
    drift: list[dict[str, object]]
    users: int
    first_5xx_p99_ms: float | None
    server_errors: int  # answers of 500 (or any 5xx but 503), retries included
    longest_gap_s: float  # the longest time without a debit answered 200
    detail: dict[str, object] = field(default_factory=dict)  # drifted users, both sides

    def assert_straight(self) -> None:
        assert self.unresolved == 0, self
        assert self.lost == 0, self
        assert self.doubled == 0, self
        assert not self.drift, (self.drift, self.detail)
        assert self.server_errors == 0, self


def check_books(debits: list[Debit], database_url: str, redis_url: str, keys: Keys) -> Books:
    async def run() -> Books:
        redis = connect_redis(redis_url, 5)
        pool = await db.open_pool(database_url, max_size=2)
        try:
            # every shard drained with no other flusher holding it: a shard the gateway's own
            # flusher was applying would otherwise be skipped, and its events look lost
            flusher = Flusher(redis, pool, keys, 5000)
            for shard in range(keys.shards):
                assert await flusher.settle(shard, tries=600), f"shard {shard} stayed locked"
            rows = await pool.fetch(
                "SELECT id::text AS id, user_id, request_id FROM credit_transactions "
                "WHERE transaction_type = 'usage'"
            )
            report = await reconcile(redis, pool, keys)
            drifted = sorted({str(d["user_id"]) for d in report.drift if "user_id" in d})
            detail = await _explain(redis, pool, keys, drifted[:3])
        finally:
            await redis.aclose()
            await pool.close()
        in_ledger = Counter((r["user_id"], r["request_id"]) for r in rows)
        ids = {r["id"] for r in rows}
        ok = [d for d in debits if d.final == 200]
        refused = [d for d in debits if d.final is not None and d.final != 200]
        slow = sorted(d.first_latency for d in debits if d.first is None or d.first >= 500)
        return Books(
            requests=len(debits),
            first_answers=dict(Counter(str(d.first) for d in debits)),
            final_answers=dict(Counter(str(d.final) for d in debits)),
            retried=sum(d.attempts > 1 for d in debits),
            unresolved=sum(d.final is None for d in debits),
            lost=sum(d.txn not in ids for d in ok),
            # a request charged twice: booked twice, booked though refused, or booked again
            # under a derived id because Redis had forgotten it (REUSED_PREFIX)
            doubled=sum(n > 1 for n in in_ledger.values())
            + sum((d.user, d.request_id) in in_ledger for d in refused)
            + sum(str(r["request_id"]).startswith(REUSED_PREFIX) for r in rows),
            drift=report.drift + ([{"backlog": report.backlog}] if report.backlog else []),
            users=report.users,
            first_5xx_p99_ms=round(
                slow[int(len(slow) * 0.99) - 1 if len(slow) > 1 else 0] * 1000, 1
            )
            if slow
            else None,
            server_errors=sum(d.server_errors for d in debits),
            longest_gap_s=longest_gap(sorted(d.answered_at for d in ok)),
            detail=detail,
        )

    return asyncio.run(run())


async def _explain(
    redis: Redis, pool: asyncpg.Pool, keys: Keys, users: list[str]
) -> dict[str, object]:
    """For a failure message: what each drifted user looks like on both sides (its Redis
    hash, its row, its resyncs and its newest ledger entries), so that a drift seen once in CI
    can be explained from the log alone."""
    out: dict[str, object] = {}
    for user in users:
        state = await redis.hgetall(keys.user(user))
        row = await pool.fetchrow(
            "SELECT credits_remaining::text, redis_version FROM user_credits WHERE user_id = $1",
            user,
        )
        resyncs = await pool.fetch(
            "SELECT fence, delta::text, after_entry, settled_at IS NOT NULL AS settled "
            "FROM redis_resyncs WHERE user_id = $1 ORDER BY fence",
            user,
        )
        ledger = await pool.fetch(
            "SELECT redis_version, transaction_type, amount::text, balance_after::text "
            "FROM credit_transactions WHERE user_id = $1 ORDER BY redis_version DESC, "
            "created_at DESC LIMIT 30",
            user,
        )
        out[user] = {
            "redis": {k: state[k] for k in ("bal", "ver", "rsx", "blks") if k in state},
            "row": dict(row) if row else None,
            "resyncs": [dict(r) for r in resyncs],
            "ledger": [tuple(r.values()) for r in ledger],
        }
    return out


def longest_gap(times: list[float]) -> float:
    return round(max((b - a for a, b in itertools.pairwise(times)), default=0.0), 2)


def debit_key(url: str, admin_key: str) -> str:
    """A stored key with the debit scope, as an LLM proxy would use."""
    r = httpx.post(
        f"{url}/api/v1/admin/keys",
        headers={"Authorization": f"Bearer {admin_key}"},
        json={"name": f"proxy-{time.monotonic_ns()}", "scopes": ["debit", "read"]},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def hydrate_users(url: str, key: str, users: list[str]) -> None:
    """Load users into Redis (and PostgreSQL) before a fault: they are the 'warm' ones."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
        for u in users:
            assert c.get("/api/v1/credits/balance", params={"user_id": u}).status_code == 200


def migrate_database(url: str) -> None:
    asyncio.run(prepare(url))
