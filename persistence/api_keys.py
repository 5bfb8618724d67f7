"""API keys: stored as SHA-256 of the key, looked up by that hash."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from persistence import queries
from persistence.db import Executor


@dataclass(frozen=True, slots=True)
class KeyRecord:
    name: str
    scopes: tuple[str, ...]
    created_at: datetime | None = None
    revoked_at: datetime | None = None


async def insert_key(
    conn: Executor, name: str, key_hash: str, scopes: list[str], actor: str
) -> KeyRecord | None:
    """Store a key's hash (audited as actor's); None when the name is taken."""
    rec = await conn.fetchrow(queries.API_KEY_INSERT, name, key_hash, scopes, actor)
    if rec is None:
        return None
    return KeyRecord(rec["name"], tuple(rec["scopes"]), rec["created_at"])


async def key_by_hash(conn: Executor, key_hash: str) -> KeyRecord | None:
    rec = await conn.fetchrow(queries.API_KEY_BY_HASH, key_hash)
    return None if rec is None else KeyRecord(rec["name"], tuple(rec["scopes"]))


async def list_keys(conn: Executor) -> list[KeyRecord]:
    rows = await conn.fetch(queries.API_KEY_LIST)
    return [
        KeyRecord(r["name"], tuple(r["scopes"]), r["created_at"], r["revoked_at"]) for r in rows
    ]


async def revoke_key(conn: Executor, name: str, actor: str) -> bool:
    return await conn.fetchval(queries.API_KEY_REVOKE, name, actor) is not None
