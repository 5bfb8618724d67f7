"""Batch debits: up to 1000 items in one Redis round trip (a pipeline of apply calls, EVALSHA
straight into the pipeline, so redis-py adds no SCRIPT EXISTS trip). Items are validated and
answered one by one, in order; users missing from Redis are hydrated and only their items go
again."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec
from redis.exceptions import NoScriptError

from gateway.errors import MeteringError
from gateway.money import fmt
from gateway.schemas import BatchItem, BatchResult, DebitRequest
from gateway.service import ApplyCall, CreditService, applied, debit_result

MAX_ITEMS = 1000
_item_decoder = msgspec.json.Decoder(DebitRequest)
HYDRATE_CONCURRENCY = 16


class BatchService:
    def __init__(self, credits: CreditService) -> None:
        self.credits = credits

    async def debit(self, items: Sequence[dict[str, Any] | msgspec.Raw]) -> BatchResult:
        out: list[BatchItem | None] = [None] * len(items)
        calls: dict[int, tuple[DebitRequest, ApplyCall]] = {}
        for i, raw in enumerate(items):
            try:
                if isinstance(raw, msgspec.Raw):
                    req = _item_decoder.decode(raw)
                else:
                    req = msgspec.convert(raw, DebitRequest)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                out[i] = BatchItem(index=i, status=400, error={"detail": str(exc)})
                continue
            try:
                calls[i] = (req, await self.credits.debit_call(req))
            except MeteringError as exc:  # e.g. a model without a price
                out[i] = BatchItem(index=i, status=exc.status_code, error={"detail": exc.detail})
        pending = list(calls)
        for _ in range(3):  # the first pass, then after hydrating or reloading scripts
            if not pending:
                break
            answers = await self._run([calls[i][1] for i in pending])
            retry, cold = [], set()
            for i, res in zip(pending, answers, strict=True):
                req, call = calls[i]
                if isinstance(res, NoScriptError):
                    retry.append(i)
                elif isinstance(res, Exception):
                    raise res
                elif res[0] == "miss":
                    retry.append(i)
                    cold.add(req.user_id)
                else:
                    out[i] = _item(i, req, res, call)
            if any(isinstance(a, NoScriptError) for a in answers):
                await self.credits.redis.script_load(self.credits.scripts.apply.script)
            await self._hydrate(cold, calls, retry, out)
            pending = [i for i in retry if out[i] is None]
        done = [item for item in out if item is not None]
        ok = sum(1 for item in done if item.status == 200)
        return BatchResult(succeeded=ok, failed=len(done) - ok, results=done)

    async def _run(self, calls: list[ApplyCall]) -> list[Any]:
        sha = self.credits.scripts.apply.sha
        async with self.credits.redis.pipeline(transaction=False) as pipe:
            for call in calls:
                args = [*self.credits.header(call.user_id), *call.args]
                pipe.evalsha(sha, len(call.keys), *call.keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    async def _hydrate(
        self,
        users: set[str],
        calls: dict[int, tuple[DebitRequest, ApplyCall]],
        retry: list[int],
        out: list[BatchItem | None],
    ) -> None:
        gate = asyncio.Semaphore(HYDRATE_CONCURRENCY)
        failed: dict[str, MeteringError] = {}

        async def one(user: str) -> None:
            async with gate:
                try:
                    await self.credits.hydrate(user)
                except MeteringError as exc:
                    failed[user] = exc

        await asyncio.gather(*(one(u) for u in users))
        for i in retry:
            exc = failed.get(calls[i][0].user_id)
            if exc is not None:
                out[i] = BatchItem(index=i, status=exc.status_code, error={"detail": exc.detail})


def _item(i: int, req: DebitRequest, res: list[Any], call: ApplyCall) -> BatchItem:
    try:
        return BatchItem(index=i, status=200, result=debit_result(req, applied(res, call)))
    except MeteringError as exc:
        error: dict[str, str] = {"detail": exc.detail}
        balance = getattr(exc, "balance", None)
        if balance is not None:
            error.update(reason=getattr(exc, "reason", ""), credits_remaining=fmt(balance))
        return BatchItem(index=i, status=exc.status_code, error=error)
