"""The credit service: every balance change is one Lua call. A user missing from Redis is
hydrated from PostgreSQL (created there first if unknown) and the call is retried once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from gateway.base.durable import ReplicaAcks
from gateway.base.errors import IdempotencyConflict, InsufficientCredits, Unavailable, Unprocessable
from gateway.credits.block_text import blocks_text
from gateway.credits.clock import (
    Clock,
    Period,
    epoch_ms,
    from_ms,
    offset_ms,
    period_end,
    period_start,
)
from gateway.credits.coalesce import Coalescer
from gateway.credits.cold import ColdPath
from gateway.credits.ids import new_id
from gateway.credits.inputs import encode_metadata
from gateway.credits.keys import Keys
from gateway.credits.money import MAX_MICRO, fmt, parse_amount, to_micro
from gateway.credits.pricing import PriceBook
from gateway.credits.records import record_arg
from gateway.credits.schemas import (
    TOKEN_FIELDS,
    Balance,
    CommitRequest,
    DebitRequest,
    DebitResult,
    Expiring,
    GrantRequest,
    GrantResult,
    Priced,
    ResetResult,
    TierChange,
    fingerprint,
)
from gateway.credits.scripts import MAX_BLOCKS, Scripts
from gateway.credits.tiers import TierTable, roll_flag
from persistence.users import (
    GrantRow,
    UserRow,
)

Args = list[str | int | bytes]


@dataclass(frozen=True, slots=True)
class ApplyCall:
    user_id: str
    request_id: str
    delta: int
    keys: list[str]
    args: Args  # after the common header


@dataclass(frozen=True, slots=True)
class Applied:
    status: str  # ok | replay
    txn: str
    delta: int
    balance: int


USER_GONE = "this user left Redis as it was loaded (Redis emptied?); nothing was changed, retry"


def backlog_full() -> Unavailable:
    return Unavailable(
        "the flusher is behind: too many changes are waiting to reach PostgreSQL; "
        "nothing was changed, retry later"
    )


def applied(res: list[Any], call: ApplyCall) -> Applied:
    """Interpret the apply script's answer; errors become the matching MeteringError."""
    status = res[0]
    if status == "backlog":
        raise backlog_full()
    if status in ("ok", "replay"):
        return Applied(status, res[1], int(res[2]), int(res[3]))
    if status in ("nsf", "cap"):
        raise payment_required(res, -call.delta)
    if status == "overflow":
        raise Unprocessable(
            f"this grant would take the balance past the maximum of {fmt(MAX_MICRO)} "
            f"(available {fmt(int(res[1]))})"
        )
    if status == "past":
        raise Unprocessable(
            f"expires_at must be in the future (now is {from_ms(int(res[1])).isoformat()})"
        )
    if status == "blocks":
        raise Unprocessable(
            f"this user holds the most open credit blocks allowed ({MAX_BLOCKS}); spend or "
            f"close some before granting more (available {fmt(int(res[1]))})"
        )
    if status == "conflict":
        raise IdempotencyConflict(
            f"request_id {call.request_id!r} was already used for this user with a different body"
        )
    raise RuntimeError(f"unexpected script result {res!r}")


def block_args(grants: list[GrantRow]) -> Args:
    """Open credit blocks as hydrate.lua takes them: the 'blks' text and its earliest expiry
    (gateway/credits/block_text.py)."""
    # none (a row written without its blocks): no argument, so the first change makes them
    # from the balance (lib.lua blocks_or_legacy) rather than claim there are none
    return list(blocks_text(grants)) if grants else []


def debit_result(req: DebitRequest, res: Applied) -> DebitResult:
    return DebitResult(
        res.txn, req.user_id, fmt(-res.delta), fmt(res.balance), res.status == "replay"
    )


def payment_required(res: list[Any], requested: int) -> InsufficientCredits:
    """The 402 for a script's 'nsf' or 'cap' answer."""
    available = int(res[1])
    if res[0] == "cap":
        spent, cap = int(res[2]), int(res[3])
        return InsufficientCredits(
            f"monthly cap reached: {fmt(spent)} of {fmt(cap)} spent or held this period, "
            f"{fmt(requested)} requested",
            available,
            reason="monthly_cap_reached",
        )
    return InsufficientCredits(
        f"insufficient credits: {fmt(requested)} requested, {fmt(available)} available",
        available,
    )


# the ledger event's field for each of a priced call's values (persistence/events.py)
_USAGE_FIELDS = (
    ("model", "model"),
    ("input_tokens", "tin"),
    ("output_tokens", "tout"),
    ("cached_input_tokens", "tcr"),
    ("cache_write_tokens", "tcw"),
    ("reasoning_tokens", "trs"),
)


def usage_fields(req: Priced) -> Args:
    """The event fields of a debit's or commit's model, token counts and metadata."""
    extra: Args = []
    for name, field in _USAGE_FIELDS:
        value = getattr(req, name)
        if value is not None:
            extra += [field, value]
    if req.metadata is not None:
        extra += ["meta", encode_metadata(req.metadata)]
    return extra


class CreditService:
    def __init__(
        self,
        redis: Redis,
        pool: asyncpg.Pool,
        keys: Keys,
        tiers: TierTable,
        clock: Clock,
        idempotency_ttl: int,
        period: Period = "month",
        pricing_ttl: float = 5.0,
        max_backlog: int = 500_000,
        *,
        acks: ReplicaAcks | None = None,
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.keys = keys
        self.tiers = tiers
        self.clock = clock
        self.period: Period = period
        self.scripts = Scripts(redis, max_backlog)
        self.coalescer = Coalescer(redis, durable=acks)
        self.cold = ColdPath(self)
        self.idempotency_ttl = idempotency_ttl
        self.pricing = PriceBook(pool, pricing_ttl)

    # -- hot path -------------------------------------------------------------------------

    async def debit(self, req: DebitRequest) -> DebitResult:
        call = await self.debit_call(req)
        res = await self.call(self.scripts.apply, req.user_id, call.keys, call.args)
        return debit_result(req, applied(res, call))

    async def debit_call(self, req: DebitRequest) -> ApplyCall:
        """Keys and arguments of the apply script for one debit (also used by batches)."""
        micro, charge = await self.charge_of(req, -1)
        extra = usage_fields(req)
        tokens: list[object] = [req.input_tokens, req.output_tokens]
        details = [getattr(req, name) for name in TOKEN_FIELDS[2:]]
        if any(d is not None for d in details):  # bodies without them keep their old digest
            tokens += details
        fp = fingerprint("debit", micro, req.model, *tokens, req.metadata)
        return self.apply_call(
            req.user_id, req.request_id, -micro, fp, "usage", extra, charge=charge
        )

    async def charge_of(
        self, req: DebitRequest | CommitRequest, sign: int
    ) -> tuple[int, str | None]:
        """The amount sent, or the gateway's price for the model and tokens (micro-credits),
        and, for a priced call while some tiers pay a markup, the amount of each for the
        script to pick the user's tier's from (pricing.by_tier, signed); else None."""
        if req.amount is not None:
            return parse_amount(req.amount), None
        return await self.pricing.priced(req, self.tiers.markups, sign)

    async def grant(self, req: GrantRequest, actor: str) -> GrantResult:
        micro = parse_amount(req.amount)
        extra: Args = ["actor", actor]
        if req.reason is not None:
            extra += ["meta", msgspec.json.encode({"reason": req.reason})]
        expires = None if req.expires_at is None else epoch_ms(req.expires_at)
        block = [expires, req.priority] if expires or req.priority is not None else []
        fp = fingerprint("grant", micro, req.kind, req.reason, *block)
        spec = f"{'' if req.priority is None else req.priority}:{expires or ''}"
        call = self.apply_call(req.user_id, req.request_id, micro, fp, req.kind, extra, spec=spec)
        res = applied(await self.call(self.scripts.apply, req.user_id, call.keys, call.args), call)
        return GrantResult(
            res.txn, req.user_id, fmt(res.delta), fmt(res.balance), res.status == "replay"
        )

    def apply_call(
        self,
        user_id: str,
        request_id: str,
        delta: int,
        fp: str,
        event: str,
        extra: Args,
        txn: str | None = None,
        spec: str = "",
        charge: str | None = None,
    ) -> ApplyCall:
        """spec: a grant's block, 'priority:expires_ms' (lib.lua apply_change); expires_ms may be
        '+ms', from now on the scripts' clock. charge: the amounts by tier (charge_of) that
        the script picks from instead of delta."""
        bucket, field = self.keys.record(user_id, request_id)
        keys = [self.keys.user(user_id), bucket, self.keys.user_stream(user_id)]
        keys.append(self.keys.holds(user_id))
        txn = txn or new_id()
        amount = delta if charge is None else charge
        rec = record_arg(field, fp, txn)
        args: Args = [amount, rec, txn, self.idempotency_ttl, request_id, event, spec, *extra]
        return ApplyCall(user_id, request_id, delta, keys, args)

    async def _state(self, user_id: str) -> list[Any]:
        """The balance script's answer: the user's state after any renewal or expired hold."""
        keys = [self.keys.user(user_id), self.keys.user_stream(user_id), self.keys.holds(user_id)]
        return list(await self.call(self.scripts.balance, user_id, keys, []))

    async def balance(self, user_id: str) -> Balance:
        _, bal, alloc, tier, cap, reset, spent, held, *blocks = await self._state(user_id)
        return Balance(
            user_id=user_id,
            tier=tier,
            credits_remaining=fmt(int(bal) - int(held)),
            credits_held=fmt(int(held)),
            credits_allocated=fmt(int(alloc)),
            monthly_cap=fmt(int(cap)) if cap else None,
            last_reset=reset,
            period_spent=fmt(int(spent)),
            expiring=self.expiring(reset, *blocks),
        )

    def period_end_ms(self, reset: str) -> int:
        """When the period of a user's last renewal (its 'reset', ISO) ends, in epoch ms: its
        allocation block's end."""
        return epoch_ms(period_end(datetime.fromisoformat(reset), self.period))

    def expiring(self, reset: str, nexp: str, due: str, arem: str, roll: str) -> Expiring | None:
        """The next credits to expire: a block's remainder at its expires_at (balance.lua's
        nexp and due), or the allocation left at the period's end when that comes first (a
        tier without rollover), or both when they fall together."""
        at, amount = int(nexp), int(due)
        if not roll.startswith("1") and int(arem):
            ends = self.period_end_ms(reset)
            if not at or ends < at:
                at, amount = ends, 0
            if ends == at:
                amount += int(arem)
        return Expiring(fmt(amount), from_ms(at).isoformat()) if at and amount else None

    async def available(self, user_id: str) -> int:
        """What the user can spend now (micro-credits), never below 0, as the scripts answer."""
        res = await self._state(user_id)
        return max(int(res[1]) - int(res[7]), 0)

    async def set_tier(self, user_id: str, tier_name: str, actor: str) -> TierChange:
        tier = self.tiers.get(tier_name)
        if tier is None:
            known = ", ".join(self.tiers.tiers)
            raise Unprocessable(f"unknown tier {tier_name!r}; known tiers: {known}")
        keys = [self.keys.user(user_id), self.keys.user_stream(user_id), self.keys.holds(user_id)]
        txn = new_id()
        cap = "" if tier.monthly_cap is None else str(tier.monthly_cap)
        args: Args = [
            tier.name,
            tier.allocation,
            cap,
            roll_flag(tier),
            txn,
            f"sys:tier:{txn}",
            actor,
        ]
        res = await self.call(self.scripts.set_tier, user_id, keys, args)
        if res[0] == "overflow":
            raise Unprocessable(
                f"moving to tier {tier.name!r} would take the balance past {fmt(MAX_MICRO)}"
            )
        return TierChange(
            user_id=user_id,
            tier=tier.name,
            credits_allocated=fmt(tier.allocation),
            credits_remaining=fmt(int(res[3])),
            monthly_cap=None if tier.monthly_cap is None else fmt(tier.monthly_cap),
            adjustment=fmt(int(res[2])),
            transaction_id=res[1] or None,
        )

    async def reset(self, user_id: str, request_id: str, actor: str) -> ResetResult:
        """Renew the user's period now (admin), idempotent by request_id."""
        bucket, field = self.keys.record(user_id, request_id)
        keys = [self.keys.user(user_id), bucket, self.keys.user_stream(user_id)]
        keys.append(self.keys.holds(user_id))
        txn = new_id()
        rec = record_arg(field, fingerprint("reset"), txn)
        args: Args = ["1", request_id, rec, self.idempotency_ttl, txn, actor]
        res = await self.call(self.scripts.reset, user_id, keys, args)
        if res[0] == "conflict":
            raise IdempotencyConflict(
                f"request_id {request_id!r} was already used for this user with a different body"
            )
        return ResetResult(res[1], user_id, fmt(int(res[2])), fmt(int(res[3])), res[0] == "replay")

    # -- plumbing -------------------------------------------------------------------------

    def header(self, user_id: str) -> Args:
        """The ARGV header every mutating script starts with (see gateway/credits/lua/lib.lua): the
        scripts read the time from Redis, shifted by the clock's offset (0 in production)."""
        return [user_id, offset_ms(self.clock), self.period, new_id()]

    async def now(self) -> datetime:
        """The time on the clock the scripts use (Redis's, shifted by the offset), for what
        Python decides with money in mind off the hot path (coupons' expiry, idle renewals)."""
        offset = offset_ms(self.clock)  # before asking: a script's offset is, too
        seconds, micros = await self.redis.time()
        return from_ms(int(seconds) * 1000 + int(micros) // 1000 + offset)

    async def request_record(
        self, user_id: str, request_id: str, forget: bool = False
    ) -> str | None:
        """The start of the body fingerprint Redis remembers for user_id's request_id (8 hex
        digits), or None; forget: drop the record (tests and drills: Redis losing it)."""
        bucket, field = self.keys.record(user_id, request_id)
        args = [*self.header(user_id), field, self.idempotency_ttl, "1" if forget else "0"]
        seen = await self.coalescer.run(self.scripts.record, [bucket], args)
        return None if seen is None else str(seen)

    async def call(self, script: AsyncScript, user_id: str, keys: list[str], args: Args) -> Any:
        """Run a script with the common header; on 'miss', load the user and send its hydrate
        and the call again together, in that order (one round trip)."""
        full = [*self.header(user_id), *args]
        res = await self.coalescer.run(script, keys, full)
        if res[0] == "miss":
            now_ms = int(res[1])
            _, hydrate = await self.cold.fetch(user_id, now_ms)
            loaded, res = await self.coalescer.run_in_order(
                [(self.scripts.hydrate, [self.keys.user(user_id)], hydrate), (script, keys, full)]
            )
            if isinstance(res, BaseException):
                raise loaded if isinstance(loaded, BaseException) else res
            if res[0] == "miss":  # the hydrate did not land first (its script reloaded): in turn
                await self.hydrate(user_id, now_ms)
                res = await self.coalescer.run(script, keys, full)
                if res[0] == "miss":  # gone again at once: Redis is being emptied or replaced
                    raise Unavailable(USER_GONE)
        if res[0] == "backlog":
            raise backlog_full()
        return res

    # -- cold path ------------------------------------------------------------------------

    async def hydrate(self, user_id: str, now_ms: int) -> UserRow:
        """Load the user from PostgreSQL (creating it with the default tier's allocation) and
        put it in Redis unless another request already did; concurrent misses are loaded
        together (gateway/credits/cold.py)."""
        return await self.cold.load(user_id, now_ms)

    def hydrate_args(self, row: UserRow, now: datetime, grants: list[GrantRow]) -> Args:
        """hydrate.lua's arguments: the row, then its open credit blocks as id/value pairs."""
        last_reset = row.last_reset or period_start(now, self.period)
        pstart = period_start(last_reset, self.period)
        tier = self.tiers.get(row.tier)
        return [
            to_micro(row.credits_remaining),
            to_micro(row.credits_allocated),
            row.tier,
            "" if row.monthly_cap is None else str(to_micro(row.monthly_cap)),
            last_reset.isoformat(),
            row.redis_version,
            int(pstart.timestamp()),
            to_micro(row.period_spent),
            roll_flag(tier),
            epoch_ms(last_reset),
            *block_args(grants),
        ]
