"""A user's credit blocks as the API shows them (GET /api/v1/credits/{user_id}/grants): the open
ones from Redis (the live truth, after any renewal or expiry), the closed ones from PostgreSQL on
request. docs/credit-blocks.md has the model."""

from __future__ import annotations

import re

from gateway.base.errors import NotFound
from gateway.credits.block_text import BlockEntry, parse_blocks
from gateway.credits.clock import from_ms
from gateway.credits.grant_schemas import Grant, GrantList
from gateway.credits.money import fmt, to_micro
from gateway.credits.service import CreditService
from persistence.users import ClosedGrant, closed_grants, get_user

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def source_of(block_id: str) -> str | None:
    """The transaction that opened a block: its id for a grant or renewal (a uuid), the renewal
    for a rollover ('r-TXN'); None for the blocks made at creation or from an older balance."""
    if _UUID.match(block_id):
        return block_id
    if block_id.startswith("r-") and _UUID.match(block_id[2:]):
        return block_id[2:]
    return None


def _iso(ms: int) -> str | None:
    return from_ms(ms).isoformat() if ms else None


def _closed(g: ClosedGrant) -> Grant:
    return Grant(
        id=g.id,
        kind=g.kind,
        amount=fmt(to_micro(g.remaining if g.amount is None else g.amount)),
        remaining=fmt(0),
        priority=g.priority,
        expires_at=None if g.expires_at is None else g.expires_at.isoformat(),
        created_at=g.created_at.isoformat(),
        source_transaction=source_of(g.id),
        status="closed",
        closed_at=None if g.closed_at is None else g.closed_at.isoformat(),
    )


class GrantsService:
    def __init__(self, credits: CreditService) -> None:
        self.credits = credits

    async def grants(self, user_id: str, include_closed: bool, limit: int) -> GrantList:
        """Open blocks in spending order, then (include_closed) up to limit closed ones, newest
        first. 404 for a user neither Redis nor PostgreSQL knows (listing creates no one)."""
        credits = self.credits
        keys = [
            credits.keys.user(user_id),
            credits.keys.user_stream(user_id),
            credits.keys.holds(user_id),
        ]
        full = [*credits.header(user_id)]
        res = await credits.coalescer.run(credits.scripts.blocks, keys, full)
        if res[0] == "miss":
            if await get_user(credits.pool, user_id) is None:
                raise NotFound(f"no user {user_id!r}")
            await credits.hydrate(user_id, int(res[1]))
            res = await credits.coalescer.run(credits.scripts.blocks, keys, full)
        if res[0] != "ok":
            raise NotFound(f"no user {user_id!r}")  # hydrated, then gone again: as unknown
        _, text, reset = res
        ends = credits.period_end_ms(reset)
        out = [self._open(entry, ends) for entry in parse_blocks(text)]
        if include_closed:
            rows = await closed_grants(credits.pool, user_id, [g.id for g in out], limit)
            out += [_closed(g) for g in rows]
        return GrantList(user_id, out)

    @staticmethod
    def _open(b: BlockEntry, period_ends: int) -> Grant:
        expires = b.expires_ms or (period_ends if b.kind == "allocation" else 0)
        return Grant(
            id=b.id,
            kind=b.kind,
            amount=fmt(b.granted),
            remaining=fmt(b.remaining),
            priority=b.priority,
            expires_at=_iso(expires),
            created_at=from_ms(b.created_ms).isoformat(),
            source_transaction=source_of(b.id),
            status="open",
        )
