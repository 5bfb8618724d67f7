"""Apply the numbered SQL files in persistence/migrations once each, in order."""

from __future__ import annotations

from importlib import resources

import asyncpg

from persistence import db, queries
from persistence.db import Executor


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("persistence").joinpath("migrations")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text()) for name in names]


async def migrate(conn: asyncpg.Connection, until: str | None = None) -> list[str]:
    """Apply pending migrations (up to and including version `until`, when given: the
    benchmark fills a schema as it was, then times a migration); safe when several processes
    start at once. Returns applied."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute(queries.MIGRATIONS_LOCK)
        await conn.execute(queries.MIGRATIONS_TABLE)
        done = {r["version"] for r in await conn.fetch(queries.MIGRATIONS_APPLIED)}
        for version, sql in migration_files():
            if version in done:
                continue
            if until is not None and version > until:
                break
            await conn.execute(sql)
            await conn.execute(queries.MIGRATION_RECORD, version)
            applied.append(version)
    return applied


async def pending(conn: Executor) -> list[str]:
    """Migrations not applied yet (all of them when the table is missing)."""
    try:
        done = {r["version"] for r in await conn.fetch(queries.MIGRATIONS_APPLIED)}
    except asyncpg.UndefinedTableError:
        done = set()
    return [v for v, _ in migration_files() if v not in done]


async def prepare(url: str) -> tuple[bool, list[str]]:
    """Create the database named in url if missing, then apply pending migrations.
    Returns (created, applied)."""
    created = await db.ensure_database(url)
    conn = await asyncpg.connect(url)
    try:
        return created, await migrate(conn)
    finally:
        await conn.close()
