"""Following the primary a Sentinel group names, and only that one.

redis-py asks the sentinels for the primary when it opens a connection, takes the first
sentinel's answer, and keeps its connections for as long as the server behind them answers as a
primary. Two things then go wrong after a failover on a loaded host (seen in the failover tests,
primary mode, 2 cores: the books disagreed for every user): a sentinel that has not yet learned
of the failover names the old primary, and a server that was promoted and then passed over (a
second failover while it was slow to answer) stays a primary, without replicas, for seconds
before the sentinels demote it. A gateway connected to it goes on charging there, and those
changes are lost when it is demoted, while the rest of the deployment follows the other one.

So: the primary is the one named by the newest configuration (the highest config epoch) among
the sentinels that answer, and every gateway process asks again each PRIMARY_CHECK_S seconds
(gateway/flusher/background.py), dropping its connections to a server the sentinels no longer
name (the idle ones at once, those in use when they are handed back).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError, TimeoutError

from gateway.base.metrics import REDIS_PRIMARY_MOVES

log = logging.getLogger("metering.redis")

PRIMARY_CHECK_S = 1.0


class NewestConfigSentinel(Sentinel):
    """A Sentinel client that asks every sentinel at once and follows the newest answer."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        answers = await asyncio.gather(
            *(sentinel.sentinel_masters() for sentinel in self.sentinels), return_exceptions=True
        )
        best: tuple[int, tuple[str, int]] | None = None
        errors = []
        for sentinel, masters in zip(self.sentinels, answers, strict=True):
            if isinstance(masters, (ConnectionError, TimeoutError)):
                errors.append(f"{sentinel} - {masters!r}")
                continue
            if isinstance(masters, BaseException):
                raise masters
            state: dict[str, Any] | None = cast(dict[str, Any], masters).get(service_name)
            if not state or not self.check_master_state(state, service_name):
                continue
            epoch = int(state.get("config-epoch", 0))
            if best is None or epoch > best[0]:
                best = (epoch, (str(state["ip"]), int(state["port"])))
        if best is None:
            more = f": {', '.join(errors)}" if errors else ""
            raise MasterNotFoundError(f"No master found for {service_name!r}{more}")
        return best[1]


async def follow_primary(client: Redis) -> bool:
    """Ask the sentinels again; when they name another primary than the one the client's
    connections lead to, drop those connections (new ones go to the named primary). True when
    it moved; False for a client not following a Sentinel group."""
    pool = getattr(client, "connection_pool", None)  # a RedisCluster client has none
    if not isinstance(pool, SentinelConnectionPool):
        return False
    named = await pool.sentinel_manager.discover_master(pool.service_name)
    if pool.master_address is None or tuple(pool.master_address) == tuple(named):
        return False
    log.warning(
        "the sentinels name another Redis primary than this process's connections lead to "
        "(%s:%s, now %s:%s): reconnecting",
        *pool.master_address,
        *named,
    )
    pool.master_address = named
    await pool.disconnect(inuse_connections=False)
    await pool.update_active_connections_for_reconnect()  # type: ignore[no-untyped-call]
    REDIS_PRIMARY_MOVES.inc()
    return True
