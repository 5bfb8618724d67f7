"""Refunds: return all or part of a debit, never more than it charged across all its refunds,
to the credit blocks it drew from (lib.lua credit_back; docs/credit-blocks.md says where a
refund of an expired block goes).

The debit is looked up in PostgreSQL (its amount and the refunds already flushed); a debit too
recent to be flushed is flushed first, on demand. The refund itself is one Lua call that keeps a
per-debit running total in Redis, so concurrent refunds cannot exceed the charge. That total
expires; once it is gone the script trusts only PostgreSQL's sum read after the user's shard was
flushed (refunds not yet flushed would be missing from it), so no expiry can refund a debit twice.
"""

from __future__ import annotations

from gateway.base.errors import Conflict, IdempotencyConflict, NotFound, Unavailable, Unprocessable
from gateway.credits.clock import epoch_ms
from gateway.credits.ids import new_id
from gateway.credits.keys import shard_of
from gateway.credits.money import MAX_MICRO, fmt, parse_amount, to_micro
from gateway.credits.records import record_arg
from gateway.credits.schemas import RefundRequest, RefundResult, fingerprint
from gateway.credits.service import Args, CreditService
from gateway.credits.settling import Settles
from persistence.db import DB_ERRORS
from persistence.ledger import DebitRecord, debit_for_refund


class RefundService:
    def __init__(self, credits: CreditService, flusher: Settles) -> None:
        self.credits = credits
        self.flusher = flusher

    async def refund(self, req: RefundRequest, actor: str) -> RefundResult:
        micro = 0 if req.amount is None else parse_amount(req.amount)
        debit_id = str(req.transaction_id)
        debit, flushed = await self._debit(req.user_id, debit_id)
        if debit.type != "usage":
            raise Unprocessable(
                f"transaction {debit_id} is a {debit.type!r} entry; only debits can be refunded"
            )
        user, keys = req.user_id, self.credits.keys
        txn = new_id()
        bucket, field = keys.record(user, req.request_id)
        script_keys = [
            keys.user(user),
            bucket,
            keys.user_stream(user),
            keys.holds(user),
            keys.refunded(user, debit_id),
        ]
        while True:
            args: Args = [
                micro,
                record_arg(field, fingerprint("refund", debit_id, micro), txn),
                txn,
                self.credits.idempotency_ttl,
                req.request_id,
                to_micro(-debit.amount),
                to_micro(debit.refunded),
                debit_id,
                epoch_ms(debit.created_at),
                int(flushed),
                actor,
                debit.draws,
                debit.blocks,
            ]
            res = await self.credits.call(self.credits.scripts.refund, user, script_keys, args)
            if res[0] != "recount" or flushed:
                break
            # the debit's running total is gone: count its refunds in PostgreSQL once the
            # shard is flushed, so none that is still on its way there is missed
            debit = await self._flushed(user, debit_id)
            flushed = True
        status = res[0]
        if status in ("ok", "replay"):
            # a replay's record holds 'available;expired' (refund.lua); an ok answers both
            available, _, expired = str(res[3]).partition(";")
            if status == "ok":
                expired = str(res[4])
            return RefundResult(
                transaction_id=res[1],
                user_id=user,
                refund_of=debit_id,
                refunded=fmt(int(res[2])),
                credits_remaining=fmt(int(available)),
                replayed=status == "replay",
                expired=fmt(int(expired or 0)),
            )
        if status == "conflict":
            raise IdempotencyConflict(
                f"request_id {req.request_id!r} was already used for this user "
                "with a different body"
            )
        if status == "exhausted":
            raise Conflict(f"transaction {debit_id} has already been refunded in full")
        if status == "exceeds":
            raise Unprocessable(
                f"refund of {fmt(micro)} exceeds what is left to refund of transaction "
                f"{debit_id}: {fmt(int(res[1]))}"
            )
        if status == "overflow":
            raise Unprocessable(f"this refund would take the balance past {fmt(MAX_MICRO)}")
        raise RuntimeError(f"unexpected script result {res!r}")

    async def _debit(self, user_id: str, debit_id: str) -> tuple[DebitRecord, bool]:
        """The debit as PostgreSQL has it, and whether that was read after a flush of the
        user's shard (a debit too recent to be there is flushed first)."""
        try:
            debit = await debit_for_refund(self.credits.pool, debit_id)
        except DB_ERRORS:
            raise Unavailable("PostgreSQL is unreachable; refunds need it, retry later") from None
        if debit is not None:
            if debit.user_id != user_id:
                raise NotFound(f"user {user_id!r} has no transaction {debit_id}")
            return debit, False
        return await self._flushed(user_id, debit_id), True

    async def _flushed(self, user_id: str, debit_id: str) -> DebitRecord:
        """The debit as PostgreSQL has it once every event of the user's shard that was waiting
        when this began has been flushed."""
        shard = shard_of(user_id, self.credits.keys.shards)
        try:
            if not await self.flusher.settle(shard):
                raise Unavailable(
                    "the user's events are being flushed elsewhere; nothing was refunded, "
                    "retry in a moment"
                )
            debit = await debit_for_refund(self.credits.pool, debit_id)
        except DB_ERRORS:
            raise Unavailable("PostgreSQL is unreachable; refunds need it, retry later") from None
        if debit is None or debit.user_id != user_id:
            raise NotFound(f"user {user_id!r} has no transaction {debit_id}")
        return debit
