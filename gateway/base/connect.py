"""Connecting to Redis: one server, a Redis Cluster, or a primary that Sentinel watches; one
small function per topology, chosen by the URL's scheme (TOPOLOGIES).

``METERING_REDIS_URL`` names one server (``redis://``, ``rediss://``, ``unix://``), a cluster
with the ``redis+cluster://host:port`` (``rediss+cluster://`` for TLS) scheme: any one node of
it; the client finds the others and follows slot moves, or a Sentinel group with
``redis+sentinel://host:port[,host:port...]/SERVICE[/DB]`` (``rediss+sentinel://``: TLS to
Redis): the sentinels are asked for SERVICE's primary, and asked again when it stops being one
(a failover), so the gateway follows promotions by itself. Every Lua script touches the keys of
one hash slot only (gateway/credits/keys.py), so scripts, pipelines and the flusher work the same
on all three.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelManagedSSLConnection
from redis.exceptions import (
    AskError,
    ClusterError,
    ConnectionError,
    ReadOnlyError,
    RedisClusterException,
    TimeoutError,
    TryAgainError,
)

from gateway.base import packing
from gateway.base.durable import NotReplicated
from gateway.base.sentinels import NewestConfigSentinel

packing.install()  # commands packed in C on every connection (gateway/base/packing.py)


class ClientFailed(ConnectionError):
    """redis-py failed mid-call on a connection closed under it (a failover): as a lost
    connection, the call may or may not have reached Redis."""


# Redis cannot take the call now, though it may shortly: unreachable or slow (ConnectionError
# includes BusyLoadingError, a restart loading its data), a replica or a demoted primary that
# refuses writes (ReadOnlyError), a cluster failing over (ClusterDownError, TryAgainError, a
# slot without a node, a MOVED or ASK answer when the slot map is stale: AskError is MovedError's
# base), or replicas that did not confirm a change (durable.NotReplicated). Every one is a 503
# with retry advice, never a 500.
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (
    ConnectionError,
    TimeoutError,
    ReadOnlyError,
    ClusterError,
    TryAgainError,
    AskError,
    RedisClusterException,
    NotReplicated,
)

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> str | None:
    """The plain URL of a cluster's seed node, or None when url names a single server."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    return f"{plain}{sep}{rest}" if plain and sep else None


def _single(url: str, timeout: float, common: dict[str, Any]) -> Redis:
    """One server: a blocking pool, so a burst waits (up to timeout) for a free connection
    instead of failing at once, and the number of connections stays bounded."""
    return Redis(connection_pool=BlockingConnectionPool.from_url(url, timeout=timeout, **common))


def _cluster(url: str, timeout: float, common: dict[str, Any]) -> Redis:
    """A RedisCluster (a pool per node), typed as Redis: it offers every command the gateway
    uses, which the cluster tests run."""
    seed = cluster_url(url)
    assert seed is not None
    return cast(Redis, RedisCluster.from_url(seed, **common))


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    service: str
    db: int
    password: str | None
    tls: bool


def sentinel_target(url: str) -> SentinelTarget:
    """redis+sentinel://[:password@]host:port[,host:port...]/SERVICE[/DB]; ValueError naming
    what is wrong."""
    scheme, _, rest = url.partition("://")
    where, _, path = rest.partition("/")
    password = None
    if "@" in where:
        credentials, where = where.rsplit("@", 1)
        password = unquote(credentials.partition(":")[2] or credentials) or None
    sentinels = []
    for node in where.split(","):
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"METERING_REDIS_URL: sentinel {node!r} is not host:port")
        sentinels.append((host, int(port)))
    service, _, db = path.partition("/")
    if not service:
        raise ValueError("METERING_REDIS_URL: name the service: redis+sentinel://host:port/NAME")
    if db and not db.isdigit():
        raise ValueError(f"METERING_REDIS_URL: database {db!r} is not a number")
    return SentinelTarget(sentinels, service, int(db or 0), password, scheme.startswith("rediss"))


def _sentinel(url: str, timeout: float, common: dict[str, Any]) -> Redis:
    """SERVICE's primary as the newest of the sentinels' configurations names it; on a
    connection error, or a READONLY answer from a primary that was demoted, the pool asks them
    again (SentinelConnectionPool), and every second besides (gateway/base/sentinels.py)."""
    target = sentinel_target(url)
    watch = NewestConfigSentinel(  # type: ignore[no-untyped-call]
        target.sentinels,
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    extra: dict[str, Any] = {"db": target.db, "password": target.password}
    if target.tls:
        extra["connection_class"] = SentinelManagedSSLConnection
    primary: Redis = watch.master_for(target.service, redis_class=Redis, **common, **extra)
    return primary


TOPOLOGIES: dict[str, Callable[[str, float, dict[str, Any]], Redis]] = {
    "redis": _single,
    "rediss": _single,
    "unix": _single,
    "redis+cluster": _cluster,
    "rediss+cluster": _cluster,
    "redis+sentinel": _sentinel,
    "rediss+sentinel": _sentinel,
}


def check_redis_url(url: str) -> None:
    """ValueError naming what is wrong with a METERING_REDIS_URL (the settings check it)."""
    scheme = url.partition("://")[0].lower()
    if scheme not in TOPOLOGIES:
        raise ValueError(
            f"METERING_REDIS_URL: {scheme!r} is not one of {', '.join(sorted(TOPOLOGIES))}"
        )
    if scheme.endswith("+sentinel"):
        sentinel_target(url)


def connect_redis(url: str, timeout: float, max_connections: int = 64) -> Redis:
    """A client that answers strings, for the topology the URL's scheme names."""
    check_redis_url(url)
    topology = TOPOLOGIES[url.partition("://")[0].lower()]
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "max_connections": max_connections,
    }
    return topology(url, timeout, common)
