"""API keys: generation, hashing, lookup with a short per-process cache, and the scope guard.

Keys are 256-bit random tokens, so a single SHA-256 is the right hash (no password stretching
needed); only the hash is stored. Keys never reach a log line: the guard logs key names only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    NotAuthorizedException,
    PermissionDeniedException,
    TooManyRequestsException,
)
from litestar.handlers.base import BaseRouteHandler

from persistence import api_keys
from persistence.db import DB_ERRORS

SCOPES = ("debit", "read", "admin")
KEY_PREFIX = "mk_"
V = TypeVar("V")


ANY_SCOPE = "any"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """ANY_SCOPE: any valid key (a route that only tells the caller about its own key)."""
        return scope == ANY_SCOPE or scope in self.scopes or "admin" in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


ADMIN_KEY_MIN = 32
KNOWN_DEFAULTS = frozenset({"dev-admin-key", "admin", "changeme", "secret", "password"})
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def admin_key_weakness(key: str | None) -> str | None:
    """Why a bootstrap admin key must not face a network (None: it may)."""
    if not key:
        return None
    if key.lower() in KNOWN_DEFAULTS:
        return "is a well-known default"
    if len(key) < ADMIN_KEY_MIN:
        return f"is shorter than {ADMIN_KEY_MIN} characters"
    return None


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


# what generate_key makes; any other token (but the bootstrap key) is refused without a lookup
_KEY_SHAPE = re.compile(rf"{KEY_PREFIX}[A-Za-z0-9_-]{{43}}")
CACHE_ENTRIES = 10_000  # per cache (known keys, unknown tokens, failing addresses)


class _Lru(Generic[V]):
    """A bounded mapping: the least recently used entry goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[str, V] = OrderedDict()

    def get(self, key: str) -> V | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        if len(self.items) > self.size:
            self.items.popitem(last=False)

    def pop(self, key: str) -> None:
        self.items.pop(key, None)


class Authenticator:
    """Resolves a bearer token to a Principal: the bootstrap admin key, or a stored key.

    Each process remembers what it looked up, in bounded LRU caches: keys found (auth_cache_ttl,
    and up to stale_ttl past that while PostgreSQL is down) and tokens not found (a negative
    cache, so the same bogus token costs one lookup per ttl, and a flood of them cannot push
    out the keys that keep working through an outage). A client address with fail_limit
    failures in fail_window seconds gets 429 for the rest of that window, except for keys this
    process already knows."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        admin_key: str | None,
        cache_ttl: float,
        stale_ttl: float = 3600.0,
        fail_limit: int = 30,
        fail_window: float = 60.0,
        cache_entries: int = CACHE_ENTRIES,
    ) -> None:
        self._pool = pool
        self._admin_hash = hash_key(admin_key) if admin_key else None
        self._ttl = cache_ttl
        self._stale_ttl = stale_ttl
        self._entries = cache_entries
        self._known: _Lru[tuple[float, Principal]] = _Lru(cache_entries)
        self._unknown: _Lru[float] = _Lru(cache_entries)
        self._fail_limit = fail_limit
        self.fail_window = fail_window
        self._failures: _Lru[tuple[float, int]] = _Lru(cache_entries)  # address -> (start, n)
        self.lookups = 0  # PostgreSQL lookups made (tests and metrics)

    async def authenticate(self, token: str, client: str | None = None) -> Principal | None:
        digest = hash_key(token)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return Principal("bootstrap-admin", frozenset({"admin"}))
        now = time.monotonic()
        hit = self._known.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        if client is not None and self._blocked(client, now):
            if hit is not None and hit[0] + self._stale_ttl > now:
                return hit[1]  # a key this process knows keeps working
            raise TooManyRequestsException(
                f"too many failed authentications from this address; retry after "
                f"{self.fail_window:.0f}s",
                headers={"Retry-After": str(int(self.fail_window))},
            )
        principal = await self._look_up(token, digest, hit, now)
        if principal is None and client is not None:
            self._failed(client, now)
        return principal

    async def _look_up(
        self, token: str, digest: str, hit: tuple[float, Principal] | None, now: float
    ) -> Principal | None:
        if _KEY_SHAPE.fullmatch(token) is None:
            return None
        until = self._unknown.get(digest)
        if until is not None and until > now:
            return None
        try:
            self.lookups += 1
            rec = await api_keys.key_by_hash(self._pool, digest)
        except DB_ERRORS:
            # PostgreSQL is down: keep serving keys seen recently (so debits of cached users go
            # on), at most stale_ttl past their last check; unknown keys get 503.
            if hit is not None and hit[0] + self._stale_ttl > now:
                return hit[1]
            raise
        if rec is None:
            self._known.pop(digest)
            self._unknown.put(digest, now + self._ttl)
            return None
        principal = Principal(rec.name, frozenset(rec.scopes))
        self._known.put(digest, (now + self._ttl, principal))
        self._unknown.pop(digest)
        return principal

    def _blocked(self, client: str, now: float) -> bool:
        seen = self._failures.get(client)
        return seen is not None and seen[0] + self.fail_window > now and seen[1] >= self._fail_limit

    def _failed(self, client: str, now: float) -> None:
        seen = self._failures.get(client)
        if seen is None or seen[0] + self.fail_window <= now:
            seen = (now, 0)
        self._failures.put(client, (seen[0], seen[1] + 1))

    def forget(self) -> None:
        """Drop cached lookups (after a revocation in this process)."""
        self._known = _Lru(self._entries)
        self._unknown = _Lru(self._entries)


async def authorize(
    auth: Authenticator, header: str, scope: str, client: str | None = None
) -> Principal:
    """The caller behind an Authorization header, if its key has the scope; else 401 or 403
    (429 for an address that failed too often)."""
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException("missing API key: send 'Authorization: Bearer <key>'")
    principal = await auth.authenticate(token.strip(), client)
    if principal is None:
        raise NotAuthorizedException("invalid or revoked API key")
    if not principal.allows(scope):
        raise PermissionDeniedException(f"this API key lacks the '{scope}' scope")
    return principal


async def scope_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Every route declares opt={"scope": ...}; health checks declare opt={"public": True}.
    Anything else (the OpenAPI schema and its pages) needs a key with the read scope, unless
    METERING_PUBLIC_SCHEMA opens the schema."""
    if handler.opt.get("public"):
        return
    scope = handler.opt.get("scope")
    if scope is None:
        if connection.app.state.services.settings.public_schema:
            return
        scope = "read"
    auth: Authenticator = connection.app.state.services.authenticator
    header = connection.headers.get("authorization", "")
    client = connection.client.host if connection.client else None
    connection.state.principal = await authorize(auth, header, scope, client)
