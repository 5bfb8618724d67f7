"""A user's credit blocks as GET /api/v1/credits/{user_id}/grants answers them (msgspec;
gateway/credits/grants.py builds them, the client SDK decodes them)."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct


class Grant(Struct):
    id: str
    kind: str
    amount: str  # all that was put in the block
    remaining: str
    priority: int
    expires_at: str | None  # an allocation block ends with its period
    created_at: str
    source_transaction: str | None  # the ledger entry that opened it (renewal for a rollover)
    status: Literal["open", "closed"]
    closed_at: str | None = None  # closed: when PostgreSQL saw it close (None: not flushed yet)


class GrantList(Struct):
    user_id: str
    grants: list[Grant]
