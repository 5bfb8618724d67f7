"""Every SQL statement in the code is prepared against the migrated schema, so a statement that
names a missing column, or a column/value count mismatch like the seed's, fails here."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import asyncpg
import pytest

from persistence import db, queries
from persistence.migrate import migrate, migration_files
from tests.conftest import PG_SERVER

ROOT = Path(__file__).resolve().parent.parent
SQL_WORDS = re.compile(
    r"\b(INSERT\s+INTO|UPDATE\s+\w+\s+(AS\s+\w+\s+)?SET|DELETE\s+FROM|SELECT\s.+\sFROM)\b",
    re.IGNORECASE | re.DOTALL,
)


@pytest.mark.parametrize("name", sorted(queries.ALL))
async def test_statement_prepares_on_migrated_schema(database_url: str, name: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        stmt = await conn.prepare(queries.ALL[name])
        # every $n placeholder is a real parameter: a count mismatch cannot hide
        placeholders = {int(n) for n in re.findall(r"\$(\d+)", queries.ALL[name])}
        assert len(stmt.get_parameters()) == (max(placeholders) if placeholders else 0)
    finally:
        await conn.close()


async def test_the_seed_bug_is_caught_by_preparing(database_url: str) -> None:
    """The check above can fail: the original broken INSERT does not prepare."""
    seed_insert = """
        INSERT INTO user_credits (user_id, credits_remaining, credits_allocated, last_reset)
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id) DO NOTHING"""
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.PostgresSyntaxError, match="more expressions than target"):
            await conn.prepare(seed_insert)
    finally:
        await conn.close()


def test_no_sql_outside_the_queries_module() -> None:
    """SQL lives in persistence/queries.py (and the flush batch's in batch_queries.py, the
    resyncs' in resync_queries.py, summaries' in summary_queries.py, the renewal cron's in
    renewal_queries.py, reconcile's in books_queries.py, which queries.py imports), so the test
    above sees all of it."""
    offenders = []
    for path in [
        *ROOT.joinpath("gateway").rglob("*.py"),
        *ROOT.joinpath("persistence").rglob("*.py"),
    ]:
        if path.name in (
            "queries.py",
            "batch_queries.py",
            "resync_queries.py",
            "summary_queries.py",
            "renewal_queries.py",
            "books_queries.py",
        ):
            continue
        if SQL_WORDS.search(path.read_text()):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


async def test_migrations_are_idempotent_and_complete(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await migrate(conn) == []  # already applied by the fixture
        applied = [r["version"] for r in await conn.fetch(queries.MIGRATIONS_APPLIED)]
        assert applied == [v for v, _ in migration_files()]
        cols = {
            r["column_name"]: (
                r["data_type"],
                r["numeric_precision"],
                r["numeric_scale"],
                r["is_nullable"],
                r["character_maximum_length"],
            )
            for r in await conn.fetch(
                "SELECT column_name, data_type, numeric_precision, numeric_scale, "
                "is_nullable, character_maximum_length FROM information_schema.columns "
                "WHERE table_name = 'user_credits'"
            )
        }
        assert cols["id"][0] == "uuid"
        assert cols["user_id"] == ("character varying", None, None, "NO", 255)
        assert cols["credits_remaining"][:4] == ("numeric", 12, 6, "NO")
        assert cols["credits_allocated"][:4] == ("numeric", 12, 6, "NO")
        assert cols["tier"] == ("character varying", None, None, "NO", 50)
        assert cols["monthly_cap"][:4] == ("numeric", 12, 6, "YES")
        for c in ("last_reset", "created_at", "updated_at"):
            assert cols[c][0] == "timestamp with time zone"
    finally:
        await conn.close()


def test_statements_take_values_only_as_parameters() -> None:
    """No statement is a template: values reach SQL as $n parameters, never as text."""
    for name, sql in queries.ALL.items():
        assert "{" not in sql.replace("'{", "").replace("jsonb_build_object", ""), name
        assert "%s" not in sql and "%(" not in sql, name


@pytest.mark.parametrize("name", ['x"; DROP TABLE user_credits; --', "a b", "", "1abc", "x" * 64])
def test_database_names_are_checked_before_use(name: str) -> None:
    from persistence.db import quote_ident

    with pytest.raises(ValueError, match="must match"):
        quote_ident(name)


async def test_the_blocks_migration_gives_existing_users_their_blocks() -> None:
    """0011: a user's allocation left (up to its balance) becomes the allocation block, the rest
    of its balance a purchase block without expiry; the blocks sum to the balance. 0012: each
    block keeps what was put in it (its remainder, for blocks made so)."""
    url = f"{PG_SERVER}/metering_mig_{uuid.uuid4().hex[:8]}"
    await db.ensure_database(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(queries.MIGRATIONS_TABLE)
        for version, sql in migration_files():
            if version.startswith("0011"):
                break
            await conn.execute(sql)
            await conn.execute(queries.MIGRATION_RECORD, version)
        await conn.execute(
            "INSERT INTO user_credits (user_id, credits_remaining, credits_allocated, tier) "
            "VALUES ('rich', 25, 5, 'trial'), ('spent', 2, 5, 'trial'), ('none', 0, 5, 'trial')"
        )
        assert [v[:4] for v in await migrate(conn)][:2] == ["0011", "0012"]
        rows = await conn.fetch(
            "SELECT user_id, kind, remaining, amount FROM credit_grants ORDER BY user_id, kind"
        )
        assert [tuple(r) for r in rows] == [
            ("none", "allocation", 0, 0),
            ("rich", "allocation", 5, 5),
            ("rich", "purchase", 20, 20),
            ("spent", "allocation", 2, 2),
        ]
    finally:
        await conn.close()
        await db.drop_database(url)
