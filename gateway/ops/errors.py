"""What the ``metering`` command prints when something outside it fails: one line naming what
could not be done and why, never a traceback (and never a password from a URL)."""

from __future__ import annotations

import asyncpg
import httpx
from redis.exceptions import AuthenticationError, RedisError

from gateway.base.connect import REDIS_UNAVAILABLE
from gateway.base.settings import Settings
from persistence.db import DB_ERRORS


class CommandError(Exception):
    """A failure the command explains in one line, with its exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def where(url: str) -> str:
    """A URL without its credentials: scheme://host:port/path (every host of a Sentinel URL)."""
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path.partition('?')[0]}"


def explain(exc: BaseException, settings: Settings, gateway: str | None = None) -> str | None:
    """One line for an error of a dependency (gateway, Redis, PostgreSQL), or None when exc is
    not one (a bug: let it show its traceback)."""
    if isinstance(exc, CommandError):
        return str(exc)
    if isinstance(exc, httpx.HTTPStatusError):
        return _refused(exc.response, gateway or str(exc.request.url))
    if isinstance(exc, httpx.TransportError):
        return f"cannot reach the gateway at {where(gateway or '')}: {type(exc).__name__}: {exc}"
    if isinstance(exc, AuthenticationError):
        return f"Redis at {where(settings.redis_url)} refused the credentials: {exc}"
    if isinstance(exc, REDIS_UNAVAILABLE):
        return f"cannot reach Redis at {where(settings.redis_url)}: {exc}"
    if isinstance(exc, RedisError):
        return f"Redis at {where(settings.redis_url)} failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"no such database at {where(settings.database_url)} (run `metering migrate`)"
    if isinstance(exc, (asyncpg.InvalidAuthorizationSpecificationError, *DB_ERRORS)):
        return f"cannot reach PostgreSQL at {where(settings.database_url)}: {exc}"
    if isinstance(exc, asyncpg.UndefinedTableError):
        return f"the database at {where(settings.database_url)} is not migrated: {exc}"
    return None


def _refused(response: httpx.Response, gateway: str) -> str:
    status = response.status_code
    if status == 401:
        return (
            f"the gateway at {where(gateway)} refused the key (401): pass --key, or set "
            "METERING_API_KEY or METERING_ADMIN_KEY to an admin key"
        )
    if status == 403:
        return f"the key lacks the scope this needs (403 from {where(gateway)}): use an admin key"
    try:
        detail = response.json().get("detail") or response.text
    except ValueError:
        detail = response.text
    return f"the gateway at {where(gateway)} answered {status}: {str(detail)[:200]}"
