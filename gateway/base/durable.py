"""Durable acknowledgements (``METERING_REDIS_DURABILITY=replica``): a change is answered only
once Redis's replicas have it, so a failover cannot take back what a client was told.

Redis replicates asynchronously: a primary that dies takes with it what its replicas had not
received yet. ``WAIT n timeout`` blocks the connection until n replicas acknowledged every write
that connection made. Each coalesced pipeline is therefore sent to its node on one connection as
``[the calls..., SET beacon, WAIT n timeout]``:

- the beacon is a one-byte write to a key of the calls' slot, so WAIT has a write of its own to
  wait for even when every call was a replay or a refusal that changed nothing, and because
  a primary replicates in one order, confirming the beacon confirms every write made on that
  node before it (a replay's original, written on another connection or by another gateway);
- on a Redis Cluster the calls are grouped by the node that holds their slot, and each group
  goes to that node over a plain connection of its own (no redirection, no retry on another
  node): one WAIT per pipeline per node, and a WAIT can only ever answer for the writes it
  follows. A call that meets MOVED or ASK fails (503, retried by the client), and the cluster's
  slot map is refreshed.

When WAIT reports fewer replicas than asked for, every call of that group fails with
NotReplicated (a 503 with the retry-with-the-same-request_id advice): the change may be applied
on the primary, and the client's retry is then a replay, answered once the replicas have it.
The flusher reads its events the same way (read_durable), so PostgreSQL never holds an event a
failover could take back from Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AskError, ConnectionError, ReadOnlyError, RedisError, TimeoutError

from gateway.base.metrics import REPLICA_WAITS_SHORT

Durability = Literal["primary", "replica"]

# What a cluster node answers when the slot map the gateway holds is stale (a failover moved the
# slot, demoted the node, or the node went away): the map is read again, at most this often.
_REFRESH_SECONDS = 0.5
_STALE_MAP = (AskError, ReadOnlyError, ConnectionError, TimeoutError)


class NotReplicated(RedisError):
    """Redis's replicas did not confirm a change in time: not acknowledged (503, retry)."""


class ReplicaAcks:
    """Sends commands to the node that holds a slot, followed by a beacon write and WAIT, on one
    connection, and says whether the replicas confirmed them."""

    def __init__(
        self,
        redis: Redis,
        beacon_of: Callable[[str], str],
        replicas: int,
        timeout_ms: int,
        max_connections: int = 64,
    ) -> None:
        self.redis = redis
        self.beacon_of = beacon_of  # the beacon key in the slot of a given key
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.max_connections = max_connections
        self.cluster = isinstance(redis, RedisCluster)
        self._nodes: dict[str, Redis] = {}
        self._refreshed = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self.pipelines = 0  # pipelines sent, each with one WAIT (tests, the benchmark)
        self.unconfirmed = 0  # pipelines whose WAIT came back short

    def node_of(self, key: str) -> tuple[str, Redis]:
        """The name of the node holding key's slot ('' for a single server) and a client that
        talks to that node only."""
        if not self.cluster:
            return "", self.redis
        node = self.redis.get_node_from_key(key)  # type: ignore[attr-defined]
        client = self._nodes.get(node.name)
        if client is None:
            kwargs = dict(node.connection_kwargs)
            pool = BlockingConnectionPool(
                connection_class=node.connection_class,
                max_connections=self.max_connections,
                timeout=kwargs.get("socket_timeout") or 2.0,
                **kwargs,
            )
            client = self._nodes[node.name] = Redis(connection_pool=pool)
        return node.name, client

    async def send(
        self, client: Redis, commands: Sequence[Sequence[Any]], slot_key: str
    ) -> tuple[list[Any], bool]:
        """Run commands, then the beacon write and WAIT, as one pipeline on one connection:
        their answers (errors as values) and whether the replicas have them all."""
        self.pipelines += 1
        try:
            async with client.pipeline(transaction=False) as pipe:
                for args in commands:
                    pipe.execute_command(*args)
                pipe.execute_command("SET", self.beacon_of(slot_key), "1")
                pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
                answers = list(await pipe.execute(raise_on_error=False))
        except _STALE_MAP:
            self.refresh()
            raise
        acks = answers[-1]
        confirmed = isinstance(acks, int) and acks >= self.replicas
        if not confirmed:
            self.unconfirmed += 1
            REPLICA_WAITS_SHORT.inc()
        if any(isinstance(a, _STALE_MAP) for a in answers):
            self.refresh()
        return answers[:-2], confirmed

    async def read_durable(self, stream: str, count: int) -> tuple[list[Any], bool]:
        """The oldest count entries of a stream, and whether the replicas have every one of
        them (read and confirmed on one connection to the stream's node)."""
        _, client = self.node_of(stream)
        answers, confirmed = await self.send(
            client, [("XRANGE", stream, "-", "+", "COUNT", count)], stream
        )
        if isinstance(answers[0], Exception):
            raise answers[0]
        return list(answers[0]), confirmed

    def refresh(self) -> None:
        """Read the cluster's slot map again (in the background, at most every half second):
        after a failover the slots' new primaries are found without waiting for a client."""
        if not self.cluster or self._refreshing is not None:
            return
        now = time.monotonic()
        if now - self._refreshed < _REFRESH_SECONDS:
            return
        self._refreshed = now

        async def again() -> None:
            try:
                await self.redis.nodes_manager.initialize()  # type: ignore[attr-defined]
            except (RedisError, OSError):
                pass  # the next failed call asks again
            finally:
                self._refreshing = None

        self._refreshing = asyncio.ensure_future(again())

    async def aclose(self) -> None:
        for client in self._nodes.values():
            await client.aclose()
        self._nodes.clear()


async def primaries_info(redis: Redis, section: str) -> list[dict[str, Any]]:
    """INFO section of every primary: the one server, or each primary of a cluster."""
    if isinstance(redis, RedisCluster):
        answers = await redis.info(section, target_nodes=RedisCluster.PRIMARIES)
        return [dict(v) for v in answers.values()] if isinstance(answers, dict) else []
    return [dict(await redis.info(section))]


async def replication_ids(redis: Redis) -> set[str]:
    """The replication id of each primary: a promotion gives the new primary a new one."""
    infos = await primaries_info(redis, "replication")
    return {str(i["master_replid"]) for i in infos if "master_replid" in i}
