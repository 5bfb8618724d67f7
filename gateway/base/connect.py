"""Connecting to Redis: one server, or a Redis Cluster.

``METERING_REDIS_URL`` names one server (``redis://``, ``rediss://``, ``unix://``) or a cluster
with the ``redis+cluster://host:port`` (``rediss+cluster://`` for TLS) scheme: any one node of
it; the client finds the others and follows slot moves. Every Lua script touches the keys of one
hash slot only (gateway/credits/keys.py), so scripts, pipelines and the flusher work the same on
both.
"""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    ClusterError,
    ConnectionError,
    ReadOnlyError,
    RedisClusterException,
    TimeoutError,
    TryAgainError,
)

# Redis cannot take the call now, though it may shortly: unreachable or slow (ConnectionError
# includes BusyLoadingError, a restart loading its data), a replica or a demoted primary that
# refuses writes (ReadOnlyError), a cluster failing over (ClusterDownError, TryAgainError, a
# slot without a node). Every one is a 503 with retry advice, never a 500.
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (
    ConnectionError,
    TimeoutError,
    ReadOnlyError,
    ClusterError,
    TryAgainError,
    RedisClusterException,
)

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> str | None:
    """The plain URL of a cluster's seed node, or None when url names a single server."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    return f"{plain}{sep}{rest}" if plain and sep else None


def connect_redis(url: str, timeout: float, max_connections: int = 64) -> Redis:
    """A client that answers strings. For one server, a blocking pool: a burst waits (up to
    timeout) for a free connection instead of failing at once, and the number of connections
    stays bounded. For a cluster, a RedisCluster (a pool per node), typed as Redis: it offers
    every command the gateway uses, which the cluster tests run."""
    seed = cluster_url(url)
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "max_connections": max_connections,
    }
    if seed is not None:
        return cast(Redis, RedisCluster.from_url(seed, **common))
    return Redis(connection_pool=BlockingConnectionPool.from_url(url, timeout=timeout, **common))
