"""Two-phase charging for calls whose cost is known only at the end (streaming LLM calls):
reserve (hold), then commit the actual cost or release. A hold left alone is returned at its
expiry by whichever Lua call next touches the user, so holds never leak."""

from __future__ import annotations

from gateway.base.errors import Conflict, IdempotencyConflict, NotFound
from gateway.base.metrics import RESERVATIONS
from gateway.credits.clock import from_ms
from gateway.credits.ids import new_id
from gateway.credits.money import fmt, parse_amount
from gateway.credits.records import record_arg
from gateway.credits.schemas import (
    CommitRequest,
    CommitResult,
    ExtendRequest,
    ReleaseResult,
    Reservation,
    ReserveRequest,
    fingerprint,
)
from gateway.credits.service import Args, CreditService, payment_required, usage_fields

RECORD_TTL = 24 * 3600  # a settled reservation is remembered this long (idempotent commits)

# the scripts' answers as metering_reservations_total outcomes
_OUTCOMES = {
    "ok": "ok",
    "replay": "replay",
    "nsf": "insufficient_credits",
    "cap": "monthly_cap_reached",
    "expired": "expired",
    "committed": "committed",
    "released": "released",
    "conflict": "conflict",
    "notfound": "not_found",
}


def _count(operation: str, answer: str) -> None:
    RESERVATIONS.labels(operation, _OUTCOMES.get(answer, "error")).inc()


class ReservationService:
    def __init__(self, credits: CreditService) -> None:
        self.credits = credits
        self.keys = credits.keys
        self.scripts = credits.scripts

    async def reserve(self, req: ReserveRequest) -> Reservation:
        micro = parse_amount(req.amount)
        rid = self.keys.new_reservation_id(req.user_id)
        user = req.user_id
        bucket, field = self.keys.record(user, req.request_id)
        keys = [
            self.keys.user(user),
            bucket,
            self.keys.holds(user),
            self.keys.reservation(rid) or "",
            self.keys.user_stream(user),
        ]
        fp = fingerprint("reserve", micro, req.ttl_seconds)
        args: Args = [
            micro,
            record_arg(field, fp, rid),
            rid,
            self.credits.idempotency_ttl,
            req.ttl_seconds * 1000,
            req.request_id,
            RECORD_TTL,
        ]
        res = await self.credits.call(self.scripts.reserve, user, keys, args)
        _count("reserve", res[0])
        if res[0] in ("nsf", "cap"):
            raise payment_required(res, micro)
        if res[0] == "conflict":
            raise IdempotencyConflict(
                f"request_id {req.request_id!r} was already used for this user "
                "with a different body"
            )
        if res[0] == "replay":  # the original reservation's expiry
            exp = await self.credits.redis.hget(self.keys.reservation(res[1]) or "", "exp")
            expires = from_ms(int(exp)) if exp else None
        else:
            expires = from_ms(int(res[4]))
        return Reservation(
            reservation_id=res[1],
            user_id=user,
            held=fmt(int(res[2])),
            credits_remaining=fmt(int(res[3])),
            expires_at=expires.isoformat() if expires else None,
            replayed=res[0] == "replay",
        )

    async def commit(self, reservation_id: str, req: CommitRequest) -> CommitResult:
        key, user = await self._owner(reservation_id)
        micro, charge = await self.credits.charge_of(req, 1)
        extra = usage_fields(req)
        keys = [key, self.keys.user(user), self.keys.holds(user), self.keys.user_stream(user)]
        args: Args = [micro if charge is None else charge, new_id(), reservation_id, *extra]
        res = await self.credits.call(self.scripts.commit, user, keys, args)
        status = res[0]
        _count("commit", status)
        if status in ("ok", "replay"):
            charged, hold = int(res[2]), int(res[4])
            return CommitResult(
                reservation_id=reservation_id,
                transaction_id=res[1],
                user_id=user,
                charged=fmt(charged),
                released=fmt(max(hold - charged, 0)),
                credits_remaining=fmt(int(res[3])),
                replayed=status == "replay",
            )
        if status in ("nsf", "cap"):
            raise payment_required(res, micro)
        if status == "conflict":
            raise Conflict(
                f"reservation {reservation_id} was already committed for {fmt(int(res[1]))}"
            )
        if status in ("released", "expired"):
            raise Conflict(f"reservation {reservation_id} was {status}; nothing can be committed")
        raise NotFound(f"no reservation {reservation_id}")

    async def release(self, reservation_id: str) -> ReleaseResult:
        key, user = await self._owner(reservation_id)
        keys = [key, self.keys.user(user), self.keys.holds(user)]
        res = await self.credits.call(self.scripts.release, user, keys, [reservation_id])
        status = res[0]
        _count("release", status)
        if status == "committed":
            raise Conflict(f"reservation {reservation_id} was committed; it cannot be released")
        if status == "notfound":
            raise NotFound(f"no reservation {reservation_id}")
        return ReleaseResult(
            reservation_id=reservation_id,
            user_id=user,
            status="expired" if status == "expired" else "released",
            released=fmt(int(res[1])),
            credits_remaining=fmt(int(res[2])),
            replayed=status == "replay",
        )

    async def extend(self, reservation_id: str, req: ExtendRequest) -> Reservation:
        """Keep a held reservation at least ttl_seconds more (never shorter than it was)."""
        key, user = await self._owner(reservation_id)
        keys = [key, self.keys.user(user), self.keys.holds(user)]
        args: Args = [reservation_id, req.ttl_seconds * 1000, RECORD_TTL]
        res = await self.credits.call(self.scripts.extend, user, keys, args)
        _count("extend", res[0])
        if res[0] in ("expired", "committed", "released"):
            raise Conflict(f"reservation {reservation_id} was {res[0]}; it cannot be extended")
        if res[0] != "ok":
            raise NotFound(f"no reservation {reservation_id}")
        return Reservation(
            reservation_id=reservation_id,
            user_id=user,
            held=fmt(int(res[1])),
            credits_remaining=fmt(await self.credits.available(user)),
            expires_at=from_ms(int(res[2])).isoformat(),
            replayed=False,
        )

    async def _owner(self, reservation_id: str) -> tuple[str, str]:
        key = self.keys.reservation(reservation_id)
        user = None if key is None else await self.credits.redis.hget(key, "u")
        if key is None or user is None:
            raise NotFound(f"no reservation {reservation_id}")  # not counted: no call made
        return key, str(user)
