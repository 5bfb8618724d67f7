"""The hot path without the framework: POST /api/v1/credits/debit (and /debit/batch) and the
reserve an LLM proxy makes before each call (POST /api/v1/credits/reservations) handled in
plain ASGI.

Everything else goes to Litestar. These routes are still declared in Litestar (OpenAPI, and
the fallback while the app is starting), and this path answers exactly as it would: the same
API-key check, body limit, msgspec validation, service call and error bodies. What it skips is
Litestar's per-request machinery (signature model, dependency resolution, guard copies,
response objects), which the benchmark showed to cost more than the debit itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, cast

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

from gateway.api.auth import authorize
from gateway.api.paths import routing_path
from gateway.base.connect import REDIS_UNAVAILABLE
from gateway.base.errors import POSTGRES_DOWN, REDIS_DOWN, InsufficientCredits, MeteringError
from gateway.base.metrics import (
    DEBITS,
    LATENCY,
    POSTGRES_ERRORS,
    REDIS_ERRORS,
    count_response,
    debit_outcome,
)
from gateway.credits.inputs import EMPTY_BODY, MAX_BODY_DEPTH, decoder, too_deep
from gateway.credits.messages import in_words
from gateway.credits.money import fmt
from gateway.credits.schemas import DebitRequest, ReserveRequest
from persistence.db import DB_ERRORS

log = logging.getLogger("metering.fastpath")


DEBIT_PATH = "/api/v1/credits/debit"
BATCH_PATH = "/api/v1/credits/debit/batch"
RESERVE_PATH = "/api/v1/credits/reservations"
FAST_PATHS = (DEBIT_PATH, BATCH_PATH, RESERVE_PATH)
BATCH_MAX_BODY = 1024 * 1024  # room for 1000 items; other routes keep the app's limit
_encode = msgspec.json.Encoder().encode
_decoder = decoder(DebitRequest)
_reserve_decoder = decoder(ReserveRequest)


class RawBatch(msgspec.Struct, forbid_unknown_fields=True):
    """A batch whose items are decoded one by one, so a bad item fails alone."""

    debits: Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1, max_length=1000)]


_batch_decoder = decoder(RawBatch)


TOO_DEEP = f"the JSON body nests more than {MAX_BODY_DEPTH} levels"


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
        path = scope["path"] if scope["type"] == ScopeType.HTTP else ""
        if (
            path not in FAST_PATHS
            or scope.get("method") != "POST"
            or getattr(self.app.state, "services", None) is None
        ):
            if not path:
                await self.app(scope, receive, send)
                return
            scope["path"] = routing_path(scope)  # gateway/api/paths.py

            async def counted(message: Any) -> None:
                if message["type"] == "http.response.start":
                    count_response(message["status"])
                await send(message)

            await self.app(scope, receive, counted)
            return
        started = time.perf_counter()
        if path == DEBIT_PATH:
            status, body = await self.answer(scope, receive, self.max_body, self.debit)
            LATENCY.observe(time.perf_counter() - started)
        elif path == RESERVE_PATH:  # counted by the service (metering_reservations_total)
            status, body = await self.answer(scope, receive, self.max_body, self.reserve, False)
        else:
            status, body = await self.answer(scope, receive, BATCH_MAX_BODY, self.batch)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if status in (429, 503):  # when to try again (the same request_id)
            wait = self.app.state.services.authenticator.fail_window if status == 429 else 1
            headers.append((b"retry-after", b"%d" % wait))
        count_response(status)
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": status,
            "headers": headers,
        }
        await send(start)
        end: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": body,
            "more_body": False,
        }
        await send(end)

    async def debit(self, raw: bytes) -> tuple[int, bytes]:
        if not raw.strip():
            return _count(400), _error(400, EMPTY_BODY)
        try:
            req = _decoder.decode(raw or b"null")
        except msgspec.ValidationError as exc:
            return _count(400), _invalid(exc, raw, DEBIT_PATH, DebitRequest)
        except msgspec.DecodeError as exc:
            return _count(400), _not_json(exc)
        except RecursionError:
            return _count(400), _error(400, TOO_DEEP)
        result = await self.app.state.services.credits.debit(req)
        DEBITS.labels("replay" if result.replayed else "ok").inc()
        return 200, _encode(result)

    async def reserve(self, raw: bytes) -> tuple[int, bytes]:
        if not raw.strip():
            return 400, _error(400, EMPTY_BODY)
        try:
            req = _reserve_decoder.decode(raw or b"null")
        except msgspec.ValidationError as exc:
            return 400, _invalid(exc, raw, RESERVE_PATH, ReserveRequest)
        except msgspec.DecodeError as exc:
            return 400, _not_json(exc)
        except RecursionError:
            return 400, _error(400, TOO_DEEP)
        return 201, _encode(await self.app.state.services.reservations.reserve(req))

    async def batch(self, raw: bytes) -> tuple[int, bytes]:
        if not raw.strip():
            return 400, _error(400, EMPTY_BODY)
        try:
            items = _batch_decoder.decode(raw or b"null").debits
        except msgspec.ValidationError as exc:
            return 400, _validation_error(str(exc), BATCH_PATH)
        except msgspec.DecodeError as exc:
            return 400, _not_json(exc)
        except RecursionError:
            return 400, _error(400, TOO_DEEP)
        result = await self.app.state.services.batch.debit(items)
        for item in result.results:
            replayed = item.result is not None and item.result.replayed
            reason = (item.error or {}).get("reason")
            DEBITS.labels(debit_outcome(item.status, replayed, reason)).inc()
        return 200, _encode(result)

    async def answer(
        self,
        scope: Scope,
        receive: Receive,
        max_body: int,
        handle: Callable[[bytes], Awaitable[tuple[int, bytes]]],
        debits: bool = True,
    ) -> tuple[int, bytes]:
        """The key check, the body, the handler; every error as the JSON Litestar would send.
        debits: count the answer in metering_debits_total (a reserve is counted elsewhere)."""
        services = self.app.state.services
        count = _count if debits else _as_is
        try:
            header = ""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    header = value.decode("latin-1")
                    break
            client = scope.get("client")
            await authorize(services.authenticator, header, "debit", client[0] if client else None)
            return await handle(await self._body(receive, max_body))
        except HTTPException as exc:  # 401, 403 from the key check
            return count(exc.status_code), _error(exc.status_code, exc.detail)
        except TooLarge:
            return count(413), _error(413, too_large(max_body))
        except InsufficientCredits as exc:
            if debits:
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
            return count(exc.status_code), _error(exc.status_code, exc.detail)
        except REDIS_UNAVAILABLE as exc:
            log.error("redis error: %s", type(exc).__name__)
            REDIS_ERRORS.inc()
            return count(503), _error(503, REDIS_DOWN)
        except DB_ERRORS as exc:
            log.error("postgres error: %s", type(exc).__name__)
            POSTGRES_ERRORS.inc()
            return count(503), _error(503, POSTGRES_DOWN)
        except Exception:
            log.exception("debit failed")
            return count(500), _error(500, "Internal Server Error")

    async def _body(self, receive: Receive, max_body: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = cast(HTTPRequestEvent, await receive())
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_body:
                raise TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def too_large(limit: int) -> str:
    """The 413's detail: the limit, and the setting that moves it."""
    setting = "" if limit == BATCH_MAX_BODY else " (METERING_MAX_BODY_BYTES)"
    return f"the body is larger than the {limit:,} bytes a request may have{setting}"


def _count(status: int) -> int:
    DEBITS.labels(debit_outcome(status)).inc()
    return status


def _as_is(status: int) -> int:
    return status


def _error(status: int, detail: str) -> bytes:
    return _encode({"status_code": status, "detail": detail})


def _not_json(exc: msgspec.DecodeError) -> bytes:
    return _error(400, f"the body is not valid JSON: {exc}")  # as gateway/api/routes/body.py


def _invalid(
    exc: msgspec.ValidationError, raw: bytes, path: str, kind: type[msgspec.Struct]
) -> bytes:
    """A body the struct refused: as the framework's route answers it, which reads the JSON
    first and refuses a body nested too deep before looking at its fields."""
    try:
        deep = too_deep(msgspec.json.decode(raw), MAX_BODY_DEPTH)
    except (msgspec.DecodeError, RecursionError):
        deep = True
    return _error(400, TOO_DEEP) if deep else _validation_error(str(exc), path, kind)


def _validation_error(message: str, path: str, kind: type[msgspec.Struct] = DebitRequest) -> bytes:
    """The body Litestar gives a validation failure: the message, and the field it is about."""
    text, _, where = message.partition(" - at `$.")
    text = in_words(text)
    if where:
        key = where.rstrip("`").split(".")[0].split("[")[0]
    else:  # a rule across fields (__post_init__): its message starts with the field's name
        first = text.split(" ", 1)[0]
        key = first if first in kind.__struct_fields__ else "data"
    return _encode(
        {
            "status_code": 400,
            "detail": f"Validation failed for POST {path}",
            "extra": [{"message": text, "key": key, "source": "body"}],
        }
    )
