"""API keys: generation, hashing, lookup with a short per-process cache, and the scope guard.

Keys are 256-bit random tokens, so a single SHA-256 is the right hash (no password stretching
needed); only the hash is stored. Keys never reach a log line: the guard logs key names only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from persistence import api_keys
from persistence.db import DB_ERRORS

SCOPES = ("debit", "read", "admin")
KEY_PREFIX = "mk_"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class Authenticator:
    """Resolves a bearer token to a Principal: the bootstrap admin key, or a stored key."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        admin_key: str | None,
        cache_ttl: float,
        stale_ttl: float = 3600.0,
    ) -> None:
        self._pool = pool
        self._admin_hash = hash_key(admin_key) if admin_key else None
        self._ttl = cache_ttl
        self._stale_ttl = stale_ttl
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def authenticate(self, token: str) -> Principal | None:
        digest = hash_key(token)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return Principal("bootstrap-admin", frozenset({"admin"}))
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            rec = await api_keys.key_by_hash(self._pool, digest)
        except DB_ERRORS:
            # PostgreSQL is down: keep serving keys seen recently (so debits of cached users go
            # on), at most stale_ttl past their last check; unknown keys get 503.
            if hit is not None and hit[1] is not None and hit[0] + self._stale_ttl > now:
                return hit[1]
            raise
        principal = None if rec is None else Principal(rec.name, frozenset(rec.scopes))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self._ttl, principal)
        return principal

    def forget(self) -> None:
        """Drop cached lookups (after a revocation in this process)."""
        self._cache.clear()


async def authorize(auth: Authenticator, header: str, scope: str) -> Principal:
    """The caller behind an Authorization header, if its key has the scope; else 401 or 403."""
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException("missing API key: send 'Authorization: Bearer <key>'")
    principal = await auth.authenticate(token.strip())
    if principal is None:
        raise NotAuthorizedException("invalid or revoked API key")
    if not principal.allows(scope):
        raise PermissionDeniedException(f"this API key lacks the '{scope}' scope")
    return principal


async def scope_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Every route declares opt={"scope": ...}; health checks declare none and skip this guard."""
    scope = handler.opt.get("scope")
    if scope is None:
        return
    auth: Authenticator = connection.app.state.services.authenticator
    header = connection.headers.get("authorization", "")
    connection.state.principal = await authorize(auth, header, scope)
