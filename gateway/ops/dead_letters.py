"""`metering dead-letters list|replay|drop`: the events PostgreSQL refused (gateway/flusher/
flush.py sets them aside in each shard's dead-letter stream), read, put back where the flusher
takes them once their cause is fixed, or dropped; every replay and drop is in the audit log.

Replaying is safe to repeat: the move is one Lua call (an entry already replayed or dropped is
"gone"), and an event already in the ledger changes nothing when flushed again (its transaction
id is its key)."""

from __future__ import annotations

import argparse
import getpass
import json
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any, cast

import asyncpg
from redis.asyncio import Redis

from gateway.base.connect import connect_redis
from gateway.base.settings import Settings
from gateway.credits.keys import Keys, keys_of
from gateway.ops.errors import CommandError
from persistence import queries
from persistence.events import fields

GONE = "{ref}: gone already (replayed or dropped); nothing done"  # what a repeat is told
REPLAY = resources.files("gateway.ops").joinpath("lua", "replay_dead.lua").read_text()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    shard: int
    id: str  # the entry's id in the dead-letter stream
    event_id: str  # its id in the shard's event stream, when it was set aside
    error: str
    line: str

    def summary(self) -> dict[str, Any]:
        """What an operator reads: where it is, why it was refused, and the event's gist."""
        try:
            event = fields(self.line)
            gist = {k: event[k] for k in ("t", "u", "tx", "rid", "amt", "ts")}
        except ValueError:
            gist = {"line": self.line[:200]}
        return {
            "ref": f"{self.shard}/{self.id}",
            "event_id": self.event_id,
            "error": self.error,
            **gist,
        }


async def _read(redis: Redis, keys: Keys, shard: int, entry_id: str = "") -> list[DeadLetter]:
    """The shard's dead letters, or the one with this id ([] when it is gone)."""
    start, end = (entry_id, entry_id) if entry_id else ("-", "+")
    entries = cast(
        list[tuple[str, dict[str, str]]], await redis.xrange(keys.dead(shard), start, end)
    )
    return [
        DeadLetter(shard, i, e.get("id", ""), e.get("error", ""), e.get("e", ""))
        for i, e in entries
    ]


async def dead_letters(redis: Redis, keys: Keys, shard: int | None = None) -> list[DeadLetter]:
    shards = range(keys.shards) if shard is None else [shard]
    return [letter for s in shards for letter in await _read(redis, keys, s)]


def parse_ref(ref: str, keys: Keys) -> tuple[int, str]:
    """'SHARD/ID' as `list` prints it."""
    shard, _, entry_id = ref.partition("/")
    if not shard.isdigit() or int(shard) >= keys.shards or not entry_id:
        raise CommandError(
            f"{ref!r} is not a dead letter reference: SHARD/ID as `metering dead-letters "
            f"list` prints it (shard 0-{keys.shards - 1})",
            2,
        )
    return int(shard), entry_id


async def act(
    redis: Redis, conn: asyncpg.Connection, keys: Keys, ref: str, action: str, actor: str
) -> str:
    """Replay or drop one dead letter, audited; an entry already gone changes nothing."""
    shard, entry_id = parse_ref(ref, keys)
    found = await _read(redis, keys, shard, entry_id)
    if not found:
        return GONE.format(ref=ref)
    letter = found[0]
    if action == "replay":
        answer = await redis.eval(REPLAY, 2, keys.dead(shard), keys.stream(shard), entry_id)
        if answer[0] == "gone":  # another operator's replay or drop came first
            return GONE.format(ref=ref)
        done = f"{ref}: replayed as {answer[1]} in {keys.stream(shard)}"
    else:
        if not await redis.xdel(keys.dead(shard), entry_id):
            return GONE.format(ref=ref)
        done = f"{ref}: dropped"
    summary = letter.summary()
    amount = str(summary.get("amt") or "")
    await conn.execute(
        queries.AUDIT_OPERATOR,
        actor,
        f"dead_letter.{action}",
        summary.get("u") or None,
        ref,
        Decimal(int(amount)).scaleb(-6) if amount.lstrip("-").isdigit() else None,
        summary.get("rid") or None,
        json.dumps({"event_id": letter.event_id, "error": letter.error, "line": letter.line}),
    )
    return done


async def command(settings: Settings, args: argparse.Namespace) -> str:
    """`metering dead-letters ...`: what it prints."""
    redis = connect_redis(settings.redis_url, settings.redis_timeout)
    keys = keys_of(settings)
    try:
        if args.dead_command == "list":
            found = await dead_letters(redis, keys, args.shard)
            return json.dumps([d.summary() for d in found], indent=2)
        conn = await asyncpg.connect(settings.database_url)  # before acting: it is audited
        try:
            actor = f"cli:{getpass.getuser()}"
            done = [
                await act(redis, conn, keys, ref, args.dead_command, actor) for ref in args.refs
            ]
        finally:
            await conn.close()
        return "\n".join(done)
    finally:
        await redis.aclose()
