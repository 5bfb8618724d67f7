"""The ``metering`` command: serve, migrate, flush, inspect."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import logging.config
import os
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from gateway.api.auth import LOOPBACK, SCOPES, admin_key_weakness, generate_key, hash_key
from gateway.base.connect import connect_redis
from gateway.base.logs import serve_log_config
from gateway.base.settings import Settings, settings_from_env
from gateway.credits.block_text import parse_blocks
from gateway.credits.clock import from_ms
from gateway.credits.keys import keys_of
from gateway.credits.money import fmt, to_micro
from gateway.credits.tiers import load_tiers
from gateway.flusher.background import has_work, make_flusher, run_forever
from gateway.ops.dead_letters import command as dead_letters_command
from gateway.ops.errors import CommandError, explain
from gateway.ops.price_import import command as pricing_import_command
from gateway.ops.repair import reconcile_command
from gateway.ops.supervise import Supervisor
from persistence import api_keys, db, ledger, users
from persistence.db import DB_ERRORS
from persistence.migrate import migration_files, prepare


async def _migrate(settings: Settings) -> list[str]:
    created, applied = await prepare(settings.database_url)
    if created:
        print(f"created database {db.split_database(settings.database_url)[0]}", file=sys.stderr)
    return applied


async def _flush(settings: Settings) -> dict[str, Any]:
    redis = connect_redis(settings.redis_url, settings.redis_timeout)
    pool = await db.open_pool(settings.database_url, max_size=2)
    flusher = make_flusher(settings, redis, pool, load_tiers(settings.tiers_file))
    try:
        stats = await flusher.flush()
        return {
            "events": stats.events,
            "new_ledger_rows": stats.inserted,
            "skipped_shards": stats.skipped_shards,
            "unreplicated_shards": stats.unreplicated_shards,
            "resynced": stats.resynced,
            "backlog": await flusher.backlog(),
        }
    finally:
        if flusher.acks is not None:
            await flusher.acks.aclose()
        await redis.aclose()
        await pool.close()


def _blocks_side_by_side(text: str | None, rows: list[users.GrantRow]) -> list[dict[str, Any]]:
    """The user's open credit blocks, one row per block id: Redis's remainder (its 'blks', in
    spending order) beside PostgreSQL's (credit_grants); None where a side lacks it."""
    out: dict[str, dict[str, Any]] = {}
    for b in parse_blocks(text):
        out[b.id] = {
            "id": b.id,
            "kind": b.kind,
            "priority": b.priority,
            "expires_at": from_ms(b.expires_ms).isoformat() if b.expires_ms else None,
            "redis": fmt(b.remaining),
            "postgres": None,
        }
    for g in rows:
        row = out.setdefault(
            g.id,
            {
                "id": g.id,
                "kind": g.kind,
                "priority": g.priority,
                "expires_at": None if g.expires_at is None else g.expires_at.isoformat(),
                "redis": None,
            },
        )
        row["postgres"] = fmt(to_micro(g.remaining))
    return list(out.values())


async def _inspect(settings: Settings, user_id: str, raw: bool) -> dict[str, Any]:
    keys = keys_of(settings)
    redis = connect_redis(settings.redis_url, settings.redis_timeout)
    conn = await asyncpg.connect(settings.database_url)
    try:
        state = await redis.hgetall(keys.user(user_id))
        row = await users.get_user(conn, user_id)
        total, n = await ledger.ledger_sum(conn, user_id)
        out: dict[str, Any] = {
            "user_id": user_id,
            "redis_key": keys.user(user_id),
            "redis": state or None,
            "postgres": None if row is None else asdict(row),
            "ledger": {"entries": n, "sum": str(total)},
            "unflushed_events_in_shard": await redis.xlen(keys.user_stream(user_id)),
            "blocks": _blocks_side_by_side(
                str(state.get("blks") or ""), (await users.open_grants(conn, [user_id]))[user_id]
            ),
        }
        if raw:  # every key of this user, as it is in Redis (the layout: gateway/credits/keys.py)
            out["raw"] = {
                keys.user(user_id): state,
                keys.holds(user_id): await redis.zrange(
                    keys.holds(user_id), 0, -1, withscores=True
                ),
                # records are fields named by a digest in shard-wide buckets: not listable
                "idempotency_records": "by request id only (a digest in the shard's buckets)",
                keys.user_stream(user_id): await redis.xlen(keys.user_stream(user_id)),
            }
        return out
    finally:
        await redis.aclose()
        await conn.close()


async def _keys(settings: Settings, args: argparse.Namespace) -> tuple[int, str]:
    """API keys from the command line (audited as cli:<login>)."""
    actor = f"cli:{getpass.getuser()}"
    conn = await asyncpg.connect(settings.database_url)
    try:
        if args.keys_command == "create":
            key = generate_key()
            rec = await api_keys.insert_key(conn, args.name, hash_key(key), args.scope, actor)
            if rec is None:
                return 1, f"an API key named {args.name!r} already exists"
            return 0, json.dumps({"key": key, "name": rec.name, "scopes": list(rec.scopes)})
        if args.keys_command == "list":
            rows = await api_keys.list_keys(conn)
            return 0, json.dumps([asdict(k) for k in rows], default=str, indent=2)
        if await api_keys.revoke_key(conn, args.name, actor):
            return 0, f"revoked {args.name}"
        return 1, f"no active API key named {args.name!r}"
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    """The command; a failure of the gateway, Redis or PostgreSQL is one line on stderr and a
    non-zero exit, never a traceback."""
    args = _parser().parse_args(argv)
    try:
        return _run(args, argv)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        line = explain(exc, settings_from_env(), getattr(args, "url", None))
        if line is None:
            raise
        print(f"metering {args.command}: {line}", file=sys.stderr)
        return exc.status if isinstance(exc, CommandError) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metering", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="apply migrations, start the API and the flusher")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--flusher",
        choices=("process", "inline"),
        default="process",
        help="run the flusher and the renewal cron in a process of their own (default), or "
        "inside each worker",
    )
    flusher = sub.add_parser(
        "flusher", help="run the flusher and the renewal cron until stopped (serve starts one)"
    )
    flusher.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    sub.add_parser("migrate", help="create the database if missing and apply migrations")
    sub.add_parser("flush", help="flush pending events from Redis to PostgreSQL now")
    inspect = sub.add_parser("inspect", help="a user's Redis state and Postgres row side by side")
    inspect.add_argument("user_id")
    inspect.add_argument("--raw", action="store_true", help="also every Redis key of the user")
    rec = sub.add_parser(
        "reconcile", help="compare every user's Redis and PostgreSQL state; exit 1 on drift"
    )
    rec.add_argument("--no-flush", action="store_true", help="do not flush pending events first")
    rec.add_argument(
        "--repair",
        action="store_true",
        help="bring each drifted user back to its ledger (audited), then compare again",
    )
    rec.add_argument(
        "--deep",
        action="store_true",
        help="also check the ledger totals and usage summaries against the ledger's rows "
        "(a pass over the whole ledger)",
    )
    keys_cmd = sub.add_parser("keys", help="create, list or revoke API keys")
    keys_sub = keys_cmd.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; it is printed once")
    create.add_argument("name")
    create.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        required=True,
        help="debit, read or admin; repeat for several",
    )
    keys_sub.add_parser("list", help="names, scopes and dates (never the keys)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    pricing = sub.add_parser("pricing", help="model prices")
    pricing_sub = pricing.add_subparsers(dest="pricing_command", required=True)
    imp = pricing_sub.add_parser(
        "import", help="add LiteLLM's prices of the models not priced yet (yours are kept)"
    )
    imp.add_argument(
        "--litellm", action="store_true", required=True, help="from LiteLLM's price map"
    )
    imp.add_argument("--file", help="the price map's JSON (default: the installed litellm's)")
    imp.add_argument(
        "--provider", action="append", default=[], help="only this litellm_provider (repeatable)"
    )
    imp.add_argument(
        "--credits-per-usd", default="1", help="credits per US dollar of LiteLLM's prices"
    )
    imp.add_argument("--dry-run", action="store_true", help="count, change nothing")
    dead = sub.add_parser(
        "dead-letters", help="events PostgreSQL refused: list them, replay or drop them"
    )
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    dead_list = dead_sub.add_parser("list", help="every dead letter (JSON), or one shard's")
    dead_list.add_argument("--shard", type=int)
    for action, text in (
        ("replay", "put events back where the flusher takes them (fix their cause first)"),
        ("drop", "remove events for good (audited; the ledger never gets them)"),
    ):
        acting = dead_sub.add_parser(action, help=text)
        acting.add_argument("refs", nargs="+", metavar="SHARD/ID", help="as `list` prints them")
    top = sub.add_parser("top", help="live view of a gateway: debits/s, flush lag, backlog")
    top.add_argument("--url", default="http://127.0.0.1:8000")
    top.add_argument(
        "--key",
        default=os.environ.get("METERING_API_KEY") or os.environ.get("METERING_ADMIN_KEY"),
        help="an admin key",
    )
    top.add_argument("--interval", type=float, default=1.0)
    top.add_argument("--once", action="store_true", help="print one view and exit")
    return parser


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    for chatty in ("httpx", "httpcore"):  # a line per request: not for a terminal view
        logging.getLogger(chatty).setLevel(logging.WARNING)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = settings_from_env()

    if args.command == "migrate":
        applied = asyncio.run(_migrate(settings))
        print(f"applied: {', '.join(applied) or 'nothing, up to date'}")
        return 0
    if args.command == "flusher":
        log_format = os.environ.get("METERING_LOG_FORMAT", "json")
        logging.config.dictConfig(serve_log_config(fmt=log_format))
        asyncio.run(run_forever(settings, parent=args.parent))
        return 0
    if args.command == "flush":
        print(json.dumps(asyncio.run(_flush(settings))))
        return 0
    if args.command == "top":
        from gateway.ops.top import run

        if not args.key:
            raise CommandError(
                "needs an admin key: --key, or METERING_API_KEY or METERING_ADMIN_KEY", 2
            )
        try:
            return run(args.url, args.key, args.interval, args.once)
        except KeyboardInterrupt:
            return 0
    if args.command == "dead-letters":
        print(asyncio.run(dead_letters_command(settings, args)))
        return 0
    if args.command == "keys":
        code, out = asyncio.run(_keys(settings, args))
        print(out)
        return code
    if args.command == "pricing":
        code, out = asyncio.run(pricing_import_command(settings, args))
        print(out, file=sys.stdout if code == 0 else sys.stderr)
        return code
    if args.command == "reconcile":
        ok, summary = asyncio.run(
            reconcile_command(settings, flush=not args.no_flush, fix=args.repair, deep=args.deep)
        )
        print(json.dumps(summary, indent=2, default=str))
        return 0 if ok else 1
    if args.command == "inspect":
        print(
            json.dumps(
                asyncio.run(_inspect(settings, args.user_id, args.raw)), indent=2, default=str
            )
        )
        return 0
    # serve
    import uvicorn

    separate = args.flusher == "process" and has_work(settings)
    if (args.workers > 1 or separate) and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # the workers', the flusher's and this process's counters go to files here, so
        # /metrics on any worker sums them all; prometheus_client reads the variable when it is
        # imported, so this process starts again with it set
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="metering-metrics-")
        args_again = sys.argv[1:] if argv is None else argv
        os.execv(sys.executable, [sys.executable, "-m", "gateway.ops.cli", *args_again])  # noqa: S606
    weakness = admin_key_weakness(settings.admin_key)
    if weakness and args.host not in LOOPBACK:
        raise SystemExit(
            f"METERING_ADMIN_KEY {weakness}; refusing to serve it on {args.host}. Set a random "
            f"key (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or "
            "serve on 127.0.0.1 for local development"
        )
    if weakness:
        logging.getLogger("metering").warning(
            "METERING_ADMIN_KEY %s: fine on loopback for development, refused on any other address",
            weakness,
        )
    _migrate_or_wait(settings)
    if not settings.admin_key:
        logging.getLogger("metering").warning(
            "METERING_ADMIN_KEY is not set: only stored API keys will be accepted"
        )
    supervisor: Supervisor | None = None
    if separate:
        supervisor = Supervisor(
            [sys.executable, "-m", "gateway.ops.cli", "flusher", "--parent", str(os.getpid())],
            dict(os.environ),
        )
        supervisor.start()
        # the workers only answer requests
        os.environ["METERING_FLUSH_INTERVAL"] = "0"
        os.environ["METERING_RENEW_CRON"] = "off"
    try:
        uvicorn.run(
            "gateway.api.app:create_app",
            log_config=serve_log_config(fmt=os.environ.get("METERING_LOG_FORMAT", "json")),
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level="info",
            access_log=False,
            http="gateway.api.connections:BoundedHttpTools",  # a header-read timeout
            limit_concurrency=settings.limit_concurrency,
            timeout_keep_alive=5,
        )
    finally:
        if supervisor is not None:  # it flushes what is pending, then exits
            supervisor.stop()
    return 0


def _migrate_or_wait(settings: Settings) -> None:
    """Apply migrations before serving. With PostgreSQL unreachable: start anyway when Redis
    says the schema is this version's (a restart during an outage: cached users are served, new
    users get 503 until PostgreSQL is back), else wait for PostgreSQL, saying so every 2 s."""
    latest = migration_files()[-1][0]
    log = logging.getLogger("metering.serve")
    while True:
        try:
            asyncio.run(_migrate(settings))
        except DB_ERRORS as exc:
            if asyncio.run(_schema_in_redis(settings)) == latest:
                log.warning(
                    "PostgreSQL is unreachable (%s); the schema is known current (%s), so "
                    "serving what Redis holds: new users get 503 until PostgreSQL is back",
                    type(exc).__name__,
                    latest,
                )
                return
            log.error(
                "PostgreSQL is unreachable (%s) and the schema cannot be checked; waiting for "
                "it (retrying every 2 s)",
                type(exc).__name__,
            )
            time.sleep(2)
            continue
        asyncio.run(_schema_in_redis(settings, latest))
        return


async def _schema_in_redis(settings: Settings, applied: str | None = None) -> str | None:
    """Read (or, with applied, record) the newest migration applied; None when Redis cannot
    say."""
    redis = connect_redis(settings.redis_url, settings.redis_timeout)
    key = keys_of(settings).schema()
    try:
        if applied is not None:
            await redis.set(key, applied)
            return applied
        value = await redis.get(key)
        return None if value is None else str(value)
    except (RedisError, OSError):
        return None
    finally:
        await redis.aclose()


if __name__ == "__main__":
    raise SystemExit(main())
