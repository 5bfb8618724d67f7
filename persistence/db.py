"""Connections: create the configured database when missing, open a pool."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from persistence import queries

# What a lost or refused PostgreSQL connection raises, or a server shutting down or starting up
# (as opposed to an error in a statement).
DB_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

# Anything statements can run on: a connection, a pooled connection or the pool itself.
Executor = asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool

_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


def split_database(url: str) -> tuple[str, str]:
    """Return (database name, URL of the maintenance database 'postgres' on the same server)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "postgres"
    return name, urlunsplit(parts._replace(path="/postgres"))


def quote_ident(name: str) -> str:
    """Database names cannot be bind parameters; accept only plain identifiers."""
    if not _DB_NAME.match(name):
        raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")
    return f'"{name}"'


async def ensure_database(url: str) -> bool:
    """Create the database named in url if it does not exist. Returns True when created."""
    name, admin_url = split_database(url)
    conn = await asyncpg.connect(admin_url)
    try:
        if await conn.fetchval(queries.DATABASE_EXISTS, name):
            return False
        try:
            await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
        except asyncpg.DuplicateDatabaseError:
            return False
        return True
    finally:
        await conn.close()


async def drop_database(url: str) -> None:
    name, admin_url = split_database(url)
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


async def open_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, timeout=5, command_timeout=30
    )
    assert pool is not None
    return pool
