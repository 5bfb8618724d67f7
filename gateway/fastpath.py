"""The hot path without the framework: POST /api/v1/credits/debit handled in plain ASGI.

Everything else goes to Litestar. The debit route is still declared in Litestar (OpenAPI, and
the fallback while the app is starting), and this path answers exactly as it would: the same
API-key check, body limit, msgspec validation, service call and error bodies. What it skips is
Litestar's per-request machinery (signature model, dependency resolution, guard copies,
response objects), which the benchmark showed to cost more than the debit itself.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

import msgspec
from litestar import Litestar
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import Receive, Scope, Send
from litestar.types.asgi_types import (
    HTTPRequestEvent,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.auth import authorize
from gateway.errors import InsufficientCredits, MeteringError
from gateway.metrics import DEBITS, LATENCY, POSTGRES_ERRORS, REDIS_ERRORS, debit_outcome
from gateway.money import fmt
from gateway.schemas import DebitRequest
from persistence.db import DB_ERRORS

log = logging.getLogger("metering.fastpath")


DEBIT_PATH = "/api/v1/credits/debit"
REDIS_DOWN = (
    "Redis is unreachable or did not answer in time. If the call reached Redis it may have "
    "been applied: retry with the same request_id (retries are idempotent)"
)
_encode = msgspec.json.Encoder().encode
_decoder = msgspec.json.Decoder(DebitRequest)


class TooLarge(Exception):
    pass


class DebitFastPath:
    """The ASGI app `metering serve` runs: this path for debits, Litestar for the rest."""

    def __init__(self, app: Litestar, max_body: int) -> None:
        self.app = app  # its state holds the services once the lifespan has started
        self.max_body = max_body

    # what callers (the tests, ops scripts) use of the Litestar app
    @property
    def state(self) -> State:
        return self.app.state

    @property
    def routes(self) -> list[Any]:
        return list(self.app.routes)

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        return self.app.lifespan()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != ScopeType.HTTP
            or scope["path"] != DEBIT_PATH
            or scope.get("method") != "POST"
            or getattr(self.app.state, "services", None) is None
        ):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, body = await self.debit(scope, receive)
        LATENCY.observe(time.perf_counter() - started)
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
        await send(start)
        end: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": body,
            "more_body": False,
        }
        await send(end)

    async def debit(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        services = self.app.state.services
        try:
            header = ""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    header = value.decode("latin-1")
                    break
            await authorize(services.authenticator, header, "debit")
            raw = await self._body(receive)
            try:
                req = _decoder.decode(raw)
            except msgspec.ValidationError as exc:
                return _count(400), _validation_error(str(exc))
            except msgspec.DecodeError as exc:
                return _count(400), _error(400, str(exc))
            result = await services.credits.debit(req)
            DEBITS.labels("replay" if result.replayed else "ok").inc()
            return 200, _encode(result)
        except HTTPException as exc:  # 401, 403 from the key check
            return _count(exc.status_code), _error(exc.status_code, exc.detail)
        except TooLarge:
            return _count(413), _error(413, "Request Entity Too Large")
        except InsufficientCredits as exc:
            DEBITS.labels(debit_outcome(402, reason=exc.reason)).inc()
            return 402, _encode(
                {
                    "status_code": 402,
                    "detail": exc.detail,
                    "reason": exc.reason,
                    "credits_remaining": fmt(exc.balance),
                }
            )
        except MeteringError as exc:
            return _count(exc.status_code), _error(exc.status_code, exc.detail)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.error("redis error: %s", type(exc).__name__)
            REDIS_ERRORS.inc()
            return _count(503), _error(503, REDIS_DOWN)
        except DB_ERRORS as exc:
            log.error("postgres error: %s", type(exc).__name__)
            POSTGRES_ERRORS.inc()
            return _count(503), _error(503, "PostgreSQL is unreachable; retry later")
        except Exception:
            log.exception("debit failed")
            return _count(500), _error(500, "Internal Server Error")

    async def _body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = cast(HTTPRequestEvent, await receive())
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _count(status: int) -> int:
    DEBITS.labels(debit_outcome(status)).inc()
    return status


def _error(status: int, detail: str) -> bytes:
    return _encode({"status_code": status, "detail": detail})


def _validation_error(message: str) -> bytes:
    """The body Litestar gives a validation failure: the message, and the field it is about."""
    text, _, where = message.partition(" - at `$.")
    key = where.rstrip("`").split(".")[0].split("[")[0] if where else "data"
    return _encode(
        {
            "status_code": 400,
            "detail": f"Validation failed for POST {DEBIT_PATH}",
            "extra": [{"message": text, "key": key, "source": "body"}],
        }
    )
