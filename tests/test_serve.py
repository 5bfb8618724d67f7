"""`metering serve` as users run it: a real server process with two workers, hit from threads."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.processes import Running, gateway_process


@pytest.fixture
def server() -> Iterator[tuple[str, str, str]]:
    """`metering serve` with two workers, on a database that does not exist yet (serve must
    create and migrate it), with a private key prefix."""
    with gateway_process(workers=2, migrate=False, METERING_FLUSH_INTERVAL="0.2") as running:
        yield running.url, running.database, running.prefix


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


def test_serve_logs_json_lines_with_the_user_and_no_key() -> None:
    with gateway_process() as gw:
        r = httpx.post(
            f"{gw.url}/api/v1/credits/debit",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            json={"user_id": "logged-user", "amount": "1", "request_id": "x"},
        )
        assert r.status_code == 200
        lines = [
            json.loads(line)
            for line in gw.process.log.read_text().splitlines()
            if line.startswith("{")
        ]
    created = [line for line in lines if line["message"] == "created user_credits row"]
    assert created and created[0]["user_id"] == "logged-user" and created[0]["level"] == "INFO"


def _children(pid: int) -> dict[int, str]:
    """Child processes of pid and their command lines (from /proc)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                out[int(stat.parent.name)] = cmd
        except (OSError, IndexError, ValueError):
            continue
    return out


def _flusher_started(gw: Running) -> bool:
    """Whether serve's flusher process has started (it logs so); a stop before that leaves the
    events in Redis for the next flusher rather than handing them over."""
    for _ in range(100):
        if "flusher running" in gw.process.log.read_text():
            return True
        time.sleep(0.1)
    return False


def _ends(pid: int, seconds: float = 10) -> bool:
    """Whether the process exits (is gone, or a zombie not reaped yet) within seconds."""
    for _ in range(int(seconds * 10)):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


async def _usage_rows(database: str) -> int:
    conn = await asyncpg.connect(database)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'usage'"
            )
        )
    finally:
        await conn.close()


def test_the_flusher_runs_in_its_own_process_and_hands_over_on_stop() -> None:
    """Workers only answer requests; serve's flusher child flushes (here only when stopped, as
    its interval is an hour) and ends with serve."""
    import asyncio

    with gateway_process(METERING_FLUSH_INTERVAL="3600") as gw:
        assert gw.process.proc is not None
        flushers = [
            pid for pid, cmd in _children(gw.process.proc.pid).items() if "cli flusher" in cmd
        ]
        assert len(flushers) == 1
        assert _flusher_started(gw)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        for i in range(10):
            body = {"user_id": "handover", "amount": "0.1", "request_id": f"r{i}"}
            r = httpx.post(f"{gw.url}/api/v1/credits/debit", json=body, headers=headers)
            assert r.status_code == 200
        assert asyncio.run(_usage_rows(gw.database)) == 0  # nothing flushed yet
        gw.process.stop()  # SIGTERM: the flusher hands over what is pending, then exits
        assert _ends(flushers[0])
        assert asyncio.run(_usage_rows(gw.database)) == 10


def test_the_flusher_stops_when_serve_is_killed() -> None:
    import asyncio

    with gateway_process(METERING_FLUSH_INTERVAL="3600") as gw:
        proc = gw.process.proc
        assert proc is not None
        for i in range(5):
            body = {"user_id": "orphan", "amount": "0.1", "request_id": f"r{i}"}
            r = httpx.post(
                f"{gw.url}/api/v1/credits/debit",
                json=body,
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            assert r.status_code == 200
        (flusher,) = [pid for pid, cmd in _children(proc.pid).items() if "cli flusher" in cmd]
        assert _flusher_started(gw)
        os.kill(proc.pid, signal.SIGKILL)  # serve alone, not its process group
        proc.wait(timeout=10)
        assert _ends(flusher)  # it sees its parent gone, hands over, exits
        assert asyncio.run(_usage_rows(gw.database)) == 5
        gw.process.proc = None  # nothing left to stop
