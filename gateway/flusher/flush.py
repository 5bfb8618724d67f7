"""Write-behind: move ledger events from the Redis shard streams into PostgreSQL.

Per shard: take the shard's advisory lock in a PostgreSQL transaction, read the oldest events
(XRANGE), apply them in that transaction, commit, then delete them from the stream (XTRIM MINID).
Exactly-once effect:
- a crash after the commit and before XTRIM leaves the events in the stream; the next flush
  applies them again, which changes nothing (ledger rows are keyed by transaction id, and a
  user's row only moves to a higher Redis version);
- a failure before the commit rolls everything back and leaves the events in the stream;
- two flushers on one shard: one holds the lock, the other skips the shard this round;
- a user whose Redis state lost changes already booked here (a failover) is resynced in the
  flush that notices it (gateway/flusher/resync.py);
- an event PostgreSQL refuses (a malformed line, a user PostgreSQL does not have) would fail its
  batch on every try and stop the shard: the batch is then applied one event at a time and each
  refused event moves to the shard's dead-letter stream with the reason, and the rest flows on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from redis.asyncio import Redis

from gateway.base.durable import ReplicaAcks, replication_ids
from gateway.base.metrics import (
    DEAD_LETTERS,
    FLUSH_BATCHES,
    FLUSH_FAILURES,
    FLUSHED_EVENTS,
    REDIS_DATA_LOSSES,
    REDIS_FAILOVERS,
)
from gateway.credits.keys import Keys
from gateway.credits.scripts import Scripts
from gateway.flusher.resync import resync_users
from persistence.events import FIELD, line_of
from persistence.ledger import (
    DEFAULT_HORIZON_MS,
    DEFAULT_WINDOW_MS,
    AlertRules,
    BatchResult,
    apply_events,
    try_flush_lock,
)

log = logging.getLogger("metering.flusher")

ALIVE_SECONDS = 5  # a flusher that has not beaten for this long is taken for dead
FAILOVER_CHECK_SECONDS = 2.0  # how often the flush loop reads the primaries' replication ids

# What an event's content makes PostgreSQL (or the ledger code) refuse, the same on every try;
# anything else (PostgreSQL or Redis unreachable) fails the flush, to be tried again.
REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, ValueError)


@dataclass(slots=True)
class FlushStats:
    events: int = 0  # events read and committed (replays included)
    inserted: int = 0  # ledger rows newly written
    dead: int = 0  # events PostgreSQL refused, moved to the dead-letter streams
    skipped_shards: list[int] = field(default_factory=list)  # locked by another flusher
    unreplicated_shards: list[int] = field(default_factory=list)  # replicas lag: not flushed
    resynced: int = 0  # users brought back in step after Redis lost booked changes


class Flusher:
    def __init__(
        self,
        redis: Redis,
        pool: asyncpg.Pool,
        keys: Keys,
        batch: int,
        concurrency: int = 4,
        alerts: AlertRules | None = None,  # low-balance webhooks to queue (None: none)
        acks: ReplicaAcks | None = None,  # replica mode: flush only what the replicas have
        window_ms: int = DEFAULT_WINDOW_MS,  # the idempotency window (METERING_IDEMPOTENCY_TTL)
        horizon_ms: int = DEFAULT_HORIZON_MS,  # retries charged once (METERING_RETRY_HORIZON)
    ) -> None:
        self.alerts = alerts
        self.acks = acks
        self.window_ms = window_ms
        self.horizon_ms = horizon_ms
        self.scripts = Scripts(redis)
        self.redis = redis
        self.pool = pool
        self.keys = keys
        self.batch = batch
        self.concurrency = concurrency

    async def flush(self) -> FlushStats:
        """Drain every shard stream that holds events once (until empty or locked elsewhere).
        A backlog of several batches is drained a few shards at a time on separate connections,
        so PostgreSQL works on them in parallel; a smaller one a shard at a time, which keeps a
        flush from taking several cores at once from the requests being served (tail latency:
        docs/performance.md)."""
        stats = FlushStats()
        sizes = await self.backlog_per_shard()
        parallel = min(self.concurrency, max(1, sum(sizes) // self.batch))
        gate = asyncio.Semaphore(parallel)

        async def one(shard: int) -> None:
            async with gate:
                await self.flush_shard(shard, stats)

        results = await asyncio.gather(
            *(one(s) for s, size in enumerate(sizes) if size), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return stats

    async def flush_shard(self, shard: int, stats: FlushStats | None = None) -> FlushStats:
        """Drain one shard's stream; stats.skipped_shards says if another flusher held it.

        Each batch is read from Redis after the shard's lock is taken, inside the transaction
        that applies it: a cold path loading a user of this shard takes the same lock, shared
        (persistence.ledger.wait_for_flush), so it never loads a row that a batch already read
        is about to move. (Read before the lock, a batch read just before Redis lost its data
        and committed after the user was reloaded pushed PostgreSQL's version past the reloaded
        user's, and its next events no longer moved the row.)"""
        stats = stats if stats is not None else FlushStats()
        stream = self.keys.stream(shard)
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                if not await try_flush_lock(conn, stream):
                    stats.skipped_shards.append(shard)
                    return stats
                entries = await self._read(stream)
                if entries is None:  # the replicas lag: what they lack could still be lost
                    stats.unreplicated_shards.append(shard)
                    return stats
                if not entries:
                    return stats
                events = [line_of(f) for _, f in entries]
                try:
                    async with conn.transaction():  # a savepoint: a refused batch leaves nothing
                        result = await apply_events(
                            conn, events, self.alerts, self.window_ms, self.horizon_ms
                        )
                except REFUSED as exc:
                    log.error(
                        "PostgreSQL refused a batch of %d events of shard %d (%s); applying "
                        "them one at a time to set the refused ones aside",
                        len(events),
                        shard,
                        type(exc).__name__,
                    )
                    result = await self._isolate(conn, shard, entries, events, stats)
                if result.regressed:  # a failover took booked changes back from Redis
                    stats.resynced += await resync_users(
                        conn, self.scripts, self.keys, result.regressed, entries[-1][0]
                    )
            stats.events += len(events)
            stats.inserted += result.inserted
            await self.acknowledge(stream, entries[-1][0])
            if len(entries) < self.batch:
                return stats

    async def _read(self, stream: str) -> list[tuple[str, dict[str, str]]] | None:
        """The oldest batch of the stream; in replica mode only once the replicas confirmed it
        (None when they did not), so PostgreSQL never books an event a failover takes back."""
        if self.acks is None:
            return cast(
                list[tuple[str, dict[str, str]]], await self.redis.xrange(stream, count=self.batch)
            )
        entries, confirmed = await self.acks.read_durable(stream, self.batch)
        if not confirmed:
            return None
        return [(str(i), dict(f)) for i, f in entries]

    async def settle(self, shard: int, tries: int = 50) -> bool:
        """Flush the shard until one pass drained it without another flusher holding it, so
        everything written to it before this call is in PostgreSQL. False when it stayed held
        or its replicas lagged (tries times 50 ms). For guards that fall back to PostgreSQL's
        truth (refunds, coupons)."""
        for _ in range(tries):
            stats = await self.flush_shard(shard)
            if not stats.skipped_shards and not stats.unreplicated_shards:
                return True
            await asyncio.sleep(0.05)
        return False

    async def _isolate(
        self,
        conn: PoolConnectionProxy[Any],
        shard: int,
        entries: list[tuple[str, dict[str, str]]],
        events: list[str],
        stats: FlushStats,
    ) -> BatchResult:
        """Apply a refused batch one event at a time (a savepoint each), in order, in the
        batch's transaction; each event PostgreSQL refuses goes to the shard's dead-letter
        stream (its line, its entry id, the reason). A crash here applies the batch again later:
        applied events are replays, and a refused one may be set aside twice (same entry id)."""
        dead, inserted, users = self.keys.dead(shard), 0, 0
        regressed: list[str] = []
        for (entry_id, _), line in zip(entries, events, strict=True):
            try:
                async with conn.transaction():
                    result = await apply_events(
                        conn, [line], self.alerts, self.window_ms, self.horizon_ms
                    )
            except REFUSED as exc:
                reason = f"{type(exc).__name__}: {exc}"[:1000]
                await self.redis.xadd(dead, {FIELD: line, "id": entry_id, "error": reason})
                DEAD_LETTERS.inc()
                stats.dead += 1
                log.error("event %s refused by PostgreSQL, moved to %s: %s", entry_id, dead, reason)
                continue
            inserted += result.inserted
            users += result.users
            regressed += result.regressed
        return BatchResult(
            inserted=inserted, users=users, regressed=tuple(dict.fromkeys(regressed))
        )

    async def acknowledge(self, stream: str, last: str) -> None:
        """Remove committed events from the stream, up to and including entry id `last` (a
        separate step, so tests can fail it). A batch is always the oldest entries and new ones
        get higher ids, so trimming below the id after `last` removes exactly the batch; a
        flusher that trims late, after another flushed more, removes nothing new."""
        ms, seq = last.split("-")
        await self.redis.xtrim(stream, minid=f"{ms}-{int(seq) + 1}", approximate=False)

    async def backlog(self) -> int:
        """Events not yet flushed, over all shards."""
        return sum(await self.backlog_per_shard())

    async def backlog_per_shard(self) -> list[int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in self.keys.all_streams():
                pipe.xlen(stream)
            counts: list[Any] = await pipe.execute()
            return [int(c) for c in counts]


class FlushLoop:
    """The background job: flush every interval; after a failure (PostgreSQL down) back off
    exponentially up to max_backoff seconds, then catch up. Also notices when Redis has lost its
    data (restarted empty, FLUSHALL): its marker key is gone."""

    def __init__(self, flusher: Flusher, interval: float, max_backoff: float = 5.0) -> None:
        self.flusher = flusher
        self.interval = interval
        self.max_backoff = max_backoff
        self.failures = 0
        self.resume_at = 0.0
        self.data_losses = 0
        self.failovers = 0
        self._replication_ids: set[str] | None = None
        self._replication_checked = 0.0

    async def tick(self) -> None:
        now = time.monotonic()
        if now < self.resume_at:
            return
        try:
            await self._check_marker()
            await self._check_failover(now)
            stats = await self.flusher.flush()
        except Exception as exc:
            FLUSH_FAILURES.inc()
            self.failures += 1
            delay = min(self.interval * 2**self.failures, self.max_backoff)
            self.resume_at = now + delay
            log.warning(
                "flush failed (%d in a row: %s); events stay in Redis, next try in %.1fs",
                self.failures,
                type(exc).__name__,
                delay,
            )
            return
        if stats.unreplicated_shards:
            log.warning(
                "%d shards not flushed: Redis's replicas did not confirm their events in time "
                "(METERING_REDIS_DURABILITY=replica); tried again next round",
                len(stats.unreplicated_shards),
            )
        if self.failures:
            log.info("flushing again after %d failed attempts", self.failures)
        self.failures = 0
        if stats.events:
            FLUSH_BATCHES.inc()
            FLUSHED_EVENTS.inc(stats.inserted)
            log.info("flushed %d events (%d new ledger rows)", stats.events, stats.inserted)

    async def beat(self) -> None:
        """Say this flusher is alive (health counts flushers that beat in the last
        ALIVE_SECONDS); forget those silent for an hour. On Redis's clock, like money."""
        key, me = self.flusher.keys.flushers(), f"{socket.gethostname()}:{os.getpid()}"
        seconds, _ = await self.flusher.redis.time()
        async with self.flusher.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {me: int(seconds)})
            pipe.zremrangebyscore(key, "-inf", int(seconds) - 3600)
            await pipe.execute()

    async def start(self) -> None:
        """Mark this Redis as known (a brand-new, empty Redis is not a loss)."""
        await self.flusher.redis.set(self.flusher.keys.marker(), str(time.time()), nx=True)

    async def _check_failover(self, now: float) -> None:
        """Every FAILOVER_CHECK_SECONDS, the primaries' replication ids: a new one means a
        replica was promoted (a failover), which may have taken back changes; said in the log
        and metering_redis_failovers_total. The users it took booked changes from are resynced
        as their events come (gateway/flusher/resync.py)."""
        if now - self._replication_checked < FAILOVER_CHECK_SECONDS:
            return
        self._replication_checked = now
        ids = await replication_ids(self.flusher.redis)
        known, self._replication_ids = self._replication_ids, ids
        if known is None or not ids or ids <= known:
            return
        self.failovers += 1
        REDIS_FAILOVERS.inc()
        log.warning(
            "Redis failed over (a primary's replication id is new: %s); users whose booked "
            "changes it lost are resynced as their events are flushed",
            ", ".join(sorted(ids - known)),
        )

    async def _check_marker(self) -> None:
        if await self.flusher.redis.set(self.flusher.keys.marker(), str(time.time()), nx=True):
            self.data_losses += 1  # the marker was gone: Redis lost its data since the last tick
            REDIS_DATA_LOSSES.inc()
            log.error(
                "Redis has lost its data (restarted empty or flushed): users are reloaded from "
                "PostgreSQL as they come back; changes that were not flushed are lost"
            )
