"""Coupons: created and accounted in PostgreSQL (max_uses and one redemption per user under a
row lock), redeemed as an idempotent 'bonus' grant in Redis. A redemption whose grant failed
(Redis down) completes when the client retries with the same request_id."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

import msgspec

from gateway.base.errors import Conflict, IdempotencyConflict, NotFound, Unavailable
from gateway.credits.coupon_schemas import (
    Coupon,
    CouponCheck,
    CouponRequest,
    RedeemRequest,
    RedeemResult,
)
from gateway.credits.ids import new_id
from gateway.credits.keys import shard_of
from gateway.credits.money import fmt, parse_amount, to_decimal, to_micro
from gateway.credits.schemas import fingerprint
from gateway.credits.service import CreditService, applied
from gateway.credits.settling import Settles
from persistence import coupons as db
from persistence.coupons import CouponRow


def _coupon(c: CouponRow) -> Coupon:
    return Coupon(
        code=c.code,
        credits=fmt(to_micro(c.credits)),
        max_uses=c.max_uses,
        uses=c.uses,
        expires_at=c.expires_at.isoformat() if c.expires_at else None,
        active=c.active,
        created_at=c.created_at.isoformat(),
        credits_expire_after_days=c.credits_expire_after_days,
    )


def new_code() -> str:
    return base64.b32encode(secrets.token_bytes(10)).decode().rstrip("=")


class CouponService:
    def __init__(self, credits: CreditService, flusher: Settles) -> None:
        self.credits = credits
        self.flusher = flusher

    async def create(self, req: CouponRequest, actor: str) -> Coupon:
        code = req.code or new_code()
        row = await db.insert_coupon(
            self.credits.pool,
            code,
            to_decimal(parse_amount(req.credits, field="credits")),
            req.max_uses,
            req.expires_at,
            await self.credits.now(),
            actor,
            req.credits_expire_after_days,
        )
        if row is None:
            raise Conflict(f"a coupon with code {code!r} already exists")
        return _coupon(row)

    async def list(self, limit: int) -> list[Coupon]:
        return [_coupon(c) for c in await db.list_coupons(self.credits.pool, limit)]

    async def deactivate(self, code: str, actor: str) -> Coupon:
        row = await db.deactivate_coupon(self.credits.pool, code, actor)
        if row is None:
            raise NotFound(f"no active coupon {code!r}")
        return _coupon(row)

    async def check(self, code: str) -> CouponCheck:
        row = await db.get_coupon(self.credits.pool, code)
        if row is None:
            raise NotFound(f"no coupon {code!r}")
        reason = self._unusable(row, await self.credits.now())
        return CouponCheck(
            code=row.code,
            valid=reason is None,
            reason=reason,
            credits=fmt(to_micro(row.credits)),
            remaining_uses=None if row.max_uses is None else row.max_uses - row.uses,
            expires_at=row.expires_at.isoformat() if row.expires_at else None,
        )

    def _unusable(self, row: CouponRow, now: datetime) -> str | None:
        if not row.active:
            return "deactivated"
        if row.expires_at is not None and row.expires_at <= now:
            return "expired"
        if row.max_uses is not None and row.uses >= row.max_uses:
            return "used_up"
        return None

    async def redeem(self, code: str, req: RedeemRequest) -> RedeemResult:
        """One redemption per user per coupon, ever. PostgreSQL records it (with its grant's
        transaction id) before the grant; the grant is made under the redemption's row lock and
        marked made, so a retry at any later time is answered from PostgreSQL, never granted
        again, however long ago Redis forgot the request id."""
        user = req.user_id
        fp = fingerprint("coupon", code)
        seen = await self.credits.request_record(user, req.request_id)
        if seen is not None and seen != fp[:8]:
            raise IdempotencyConflict(
                f"request_id {req.request_id!r} was already used for this user "
                "with a different body"
            )
        found = await db.redeem_once(
            self.credits.pool, code, user, req.request_id, new_id(), await self.credits.now()
        )
        if found.status == "taken" and found.granted:
            raise Conflict(f"user {user!r} has already redeemed coupon {code!r}")
        if found.status == "taken":  # its grant failed (Redis down) and was not retried yet
            raise Conflict(
                f"user {user!r} has a redemption of coupon {code!r} pending under another "
                "request_id: retry that request to complete it"
            )
        if found.status == "unusable" or found.credits is None or found.transaction_id is None:
            row = await db.get_coupon(self.credits.pool, code)
            if row is None:
                raise NotFound(f"no coupon {code!r}")
            reason = self._unusable(row, await self.credits.now())
            raise Conflict(f"coupon {code!r} cannot be redeemed: {reason}")
        micro, txn = to_micro(found.credits), found.transaction_id
        replayed = found.status == "replay"
        if not found.granted:
            taken: IdempotencyConflict | None = None
            # read before the row lock is taken: inside, a second connection per redemption
            # could exhaust the pool while every settling waits for one
            coupon = await db.get_coupon(self.credits.pool, code)
            days = None if coupon is None else coupon.credits_expire_after_days
            async with db.settling(self.credits.pool, code, user) as settling:
                if not settling.granted and not (replayed and await self._made(settling, req, txn)):
                    taken = await self._grant(settling, code, req, micro, fp, txn, days)
                if taken is None:
                    await settling.done()
            if taken is not None:  # raised once the undo is committed (inside, it rolled back)
                raise taken
        available = await self.credits.available(user)
        return RedeemResult(
            code=code,
            user_id=user,
            transaction_id=txn,
            granted=fmt(micro),
            credits_remaining=fmt(available),
            replayed=replayed,
        )

    async def _grant(
        self,
        settling: db.Settling,
        code: str,
        req: RedeemRequest,
        micro: int,
        fp: str,
        txn: str,
        days: int | None,
    ) -> IdempotencyConflict | None:
        """Make the redemption's grant in Redis (a replay when Redis already has it under this
        request id). A request id another request holds undoes the redemption (the use is given
        back): the conflict to answer (409) is returned, for the caller to raise after the
        undo is committed."""
        meta = msgspec.json.encode({"coupon": code})
        # the credits' expiry counts from the grant, on the scripts' clock ('+ms')
        spec = "" if days is None else f":+{days * 86_400_000}"
        call = self.credits.apply_call(
            req.user_id, req.request_id, micro, fp, "bonus", ["meta", meta], txn=txn, spec=spec
        )
        try:
            answer = await self.credits.call(
                self.credits.scripts.apply, req.user_id, call.keys, call.args
            )
            applied(answer, call)
        except IdempotencyConflict as exc:
            await settling.undo()
            return exc
        return None

    async def _made(self, settling: db.Settling, req: RedeemRequest, txn: str) -> bool:
        """Whether a pending redemption's grant was made (a crash or a lost answer between the
        grant and its mark). While Redis remembers the request id, the grant call itself replays
        it (False here: let it); after that, only the ledger knows, once the user's shard is
        flushed."""
        user = settling.user_id
        if await self.credits.request_record(user, req.request_id) is not None:
            return False
        shard = shard_of(user, self.credits.keys.shards)
        if not await self.flusher.settle(shard):
            raise Unavailable(
                "this redemption is being settled elsewhere; nothing was granted, retry later"
            )
        return await settling.in_ledger(txn)
