"""Two gateway instances (separate `metering serve` processes) on the same Redis and PostgreSQL,
both taking debits and both flushing: no double flush, nothing lost, books straight."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.books import assert_books_balance
from tests.conftest import ADMIN_KEY
from tests.processes import flushed, gateway_process, sibling


def test_two_instances_share_the_work_and_the_books_balance() -> None:
    with gateway_process(METERING_FLUSH_INTERVAL="0.1") as first:
        with sibling(first, METERING_FLUSH_INTERVAL="0.1") as second:
            urls = itertools.cycle([first.url, second.url])
            jobs = [(next(urls), i) for i in range(600)]

            def debit(job: tuple[str, int]) -> tuple[int, str]:
                url, i = job
                r = httpx.post(
                    f"{url}/api/v1/credits/debit",
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                    json={"user_id": f"u{i % 10}", "amount": "0.01", "request_id": f"r{i % 300}"},
                )  # each id sent to both
                return r.status_code, r.json().get("transaction_id", "")

            with ThreadPoolExecutor(max_workers=16) as pool:
                results = list(pool.map(debit, jobs))
        assert Counter(code for code, _ in results) == {200: 600}
        assert len({txn for _, txn in results}) == 300  # a retry on the other instance replays

        async def books() -> None:
            async with flushed(first) as (pool, redis, keys):
                usage = "SELECT count(*) FROM credit_transactions WHERE transaction_type='usage'"
                assert await pool.fetchval(usage) == 300
                assert await assert_books_balance(pool, redis, keys) == 10

        asyncio.run(books())
