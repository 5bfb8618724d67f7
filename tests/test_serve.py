"""`metering serve` as users run it: a real server process with two workers, hit from threads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import asyncpg
import httpx
import pytest

from loadtests.servers import free_port
from persistence import db
from tests.conftest import ADMIN_KEY, PG_SERVER, REDIS_URL


@pytest.fixture
def server() -> Iterator[tuple[str, str, str]]:
    """A fresh database name (serve must create and migrate it) and a private key prefix."""
    database = f"{PG_SERVER}/metering_serve_{uuid.uuid4().hex[:8]}"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = {
        **os.environ,
        "METERING_DATABASE_URL": database,
        "METERING_REDIS_URL": REDIS_URL,
        "METERING_ADMIN_KEY": ADMIN_KEY,
        "METERING_KEY_PREFIX": prefix,
        "METERING_FLUSH_INTERVAL": "0.2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read() if proc.stdout else "serve exited")
            time.sleep(0.1)
        else:
            raise RuntimeError("gateway did not become ready")
        yield url, database, prefix
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        assert ADMIN_KEY not in out  # keys never reach the logs
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        for key in r.scan_iter(match=f"{prefix}:*"):
            r.delete(key)
        r.close()
        import asyncio

        asyncio.run(db.drop_database(database))


def test_two_workers_never_overspend_and_flush_exactly(server: tuple[str, str, str]) -> None:
    url, database, _ = server
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def debit(i: int) -> tuple[int, str | None]:
        with httpx.Client(base_url=url, headers=headers, timeout=10) as c:
            body = {"user_id": "proc-user", "amount": "0.05", "request_id": f"r{i % 200}"}
            r = c.post("/api/v1/credits/debit", json=body)
            return r.status_code, r.json().get("transaction_id")

    # 400 requests over 200 request ids (every id sent twice), budget for 100 debits
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(debit, range(400)))
    codes = Counter(code for code, _ in results)
    assert set(codes) == {200, 402}
    assert len({txn for code, txn in results if code == 200}) == 100  # exactly 100 charges
    bal = httpx.get(
        f"{url}/api/v1/credits/balance", params={"user_id": "proc-user"}, headers=headers
    ).json()
    assert bal["credits_remaining"] == "0.000000"

    async def ledger() -> tuple[Decimal, int, Decimal]:
        conn = await asyncpg.connect(database)
        try:
            for _ in range(100):  # the background flusher catches up within a few intervals
                rec = await conn.fetchrow(
                    "SELECT u.credits_remaining AS bal, count(t.id) AS n, sum(t.amount) AS total "
                    "FROM user_credits u JOIN credit_transactions t USING (user_id) "
                    "WHERE u.user_id = 'proc-user' AND t.transaction_type = 'usage' "
                    "GROUP BY u.credits_remaining"
                )
                if rec and rec["n"] == 100 and rec["bal"] == 0:
                    return rec["bal"], rec["n"], rec["total"]
                time.sleep(0.1)
            return (rec["bal"], rec["n"], rec["total"]) if rec else (Decimal(-1), 0, Decimal(0))
        finally:
            await conn.close()

    import asyncio

    assert asyncio.run(ledger()) == (Decimal(0), 100, Decimal("-5"))
