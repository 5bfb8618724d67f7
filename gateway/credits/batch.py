"""Batch debits: up to 1000 items in one Redis round trip. Items are grouped by shard and each
group is one apply_many call (the items applied in order, each exactly as a single debit), so a
batch costs one command per shard to build and to run, not one per item; the calls go through
the coalescer, in one pipeline. Items are validated and answered one by one, in order; users
missing from Redis are hydrated and only their items go again."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec

from gateway.base.errors import MeteringError
from gateway.credits.ids import new_id
from gateway.credits.inputs import MAX_BODY_DEPTH, decode_amount, decoder
from gateway.credits.money import fmt
from gateway.credits.schemas import BatchItem, BatchResult, DebitRequest
from gateway.credits.service import ApplyCall, Args, CreditService, applied, debit_result

MAX_ITEMS = 1000
_item_decoder = decoder(DebitRequest)
_encode = msgspec.json.Encoder().encode
HYDRATE_CONCURRENCY = 16
REDIS_EMPTIED = "this user left Redis while the batch ran (Redis was emptied?); retry the item"


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
                    req = msgspec.convert(raw, DebitRequest, dec_hook=decode_amount)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                out[i] = BatchItem(index=i, status=400, error={"detail": str(exc)})
                continue
            except RecursionError:
                detail = f"the item nests more than {MAX_BODY_DEPTH} levels"
                out[i] = BatchItem(index=i, status=400, error={"detail": detail})
                continue
            try:
                calls[i] = (req, await self.credits.debit_call(req))
            except MeteringError as exc:  # e.g. a model without a price
                out[i] = BatchItem(index=i, status=exc.status_code, error={"detail": exc.detail})
        pending = list(calls)
        for _ in range(2):  # the first pass, then again after hydrating missing users
            if not pending:
                break
            answers = await self._run([calls[i][1] for i in pending])
            retry: list[int] = []
            cold: dict[str, int] = {}  # user id -> the scripts' time of its 'miss'
            for i, res in zip(pending, answers, strict=True):
                req, call = calls[i]
                if res[0] == "miss":
                    retry.append(i)
                    cold[req.user_id] = int(res[1])
                else:
                    out[i] = _item(i, req, res, call)
            await self._hydrate(cold, calls, retry, out)
            pending = [i for i in retry if out[i] is None]
        for i in pending:  # hydrated, then gone again (Redis emptied meanwhile): retry later
            out[i] = BatchItem(index=i, status=503, error={"detail": REDIS_EMPTIED})
        done = [item for item in out if item is not None]
        ok = sum(1 for item in done if item.status == 200)
        return BatchResult(succeeded=ok, failed=len(done) - ok, results=done)

    async def _run(self, calls: list[ApplyCall]) -> list[Any]:
        """Answers of the apply script for each call, in order: one apply_many call per shard."""
        credits = self.credits
        head: Args = [*credits.header("")[:3], "", credits.idempotency_ttl, "usage"]
        groups: dict[str, tuple[list[int], list[str], list[list[Any]], list[bytes]]] = {}
        for n, call in enumerate(calls):
            user_key, idem_key, stream, holds = call.keys
            delta, rec, txn, _, rid, _, _, *extra = call.args  # every item is a usage event
            group = groups.get(stream)
            if group is None:
                group = groups[stream] = ([], [stream], [], [])
            group[0].append(n)
            group[1].extend((user_key, idem_key, holds))
            extra = [x.decode() if isinstance(x, bytes) else str(x) for x in extra]
            group[2].append([call.user_id, new_id(), str(delta), txn, rid, extra])
            group[3].append(rec)  # type: ignore[arg-type]  # bytes: records.record_arg
        script = credits.scripts.apply_many
        results = await asyncio.gather(
            *(
                credits.coalescer.run(script, keys, [*head, _encode(items), b"".join(recs)])
                for _, keys, items, recs in groups.values()
            )
        )
        answers: list[Any] = [None] * len(calls)
        for (order, _, _, _), result in zip(groups.values(), results, strict=True):
            for n, answer in zip(order, result, strict=True):
                answers[n] = answer
        return answers

    async def _hydrate(
        self,
        users: dict[str, int],
        calls: dict[int, tuple[DebitRequest, ApplyCall]],
        retry: list[int],
        out: list[BatchItem | None],
    ) -> None:
        gate = asyncio.Semaphore(HYDRATE_CONCURRENCY)
        failed: dict[str, MeteringError] = {}

        async def one(user: str, now_ms: int) -> None:
            async with gate:
                try:
                    await self.credits.hydrate(user, now_ms)
                except MeteringError as exc:
                    failed[user] = exc

        await asyncio.gather(*(one(u, t) for u, t in users.items()))
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
