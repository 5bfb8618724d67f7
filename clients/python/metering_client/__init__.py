"""An async client for the LLM proxy side.

    async with MeteringClient("http://127.0.0.1:8000", api_key) as metering:
        await metering.debit("alice", "0.0125", model="gpt-4o")
        async with metering.reserve("alice", "0.50") as hold:
            reply = await call_the_model()
            await hold.commit(model="gpt-4o", input_tokens=..., output_tokens=...)
        # not committed (or an exception inside the block): the hold is released

One connection pool per client, bounded timeouts, and retries of 5xx answers, timeouts and
connection errors with the same request_id, so a retry never charges twice. A gateway still not
answering after the retries raises GatewayUnreachable; an answer of 4xx or 5xx MeteringAPIError
(InsufficientCreditsError for 402). HTTP goes through aiohttp when it is installed (about twice
as fast per call as httpx, see metering_client/http.py), else httpx.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from metering_client.http import Answer, GatewayUnreachable, HttpKind, make_http
from metering_client.schemas import (
    Balance,
    CommitResult,
    DebitResult,
    GrantList,
    PriceList,
    ReleaseResult,
    Reservation,
)

T = TypeVar("T")
Amount = Decimal | str | int


class MeteringAPIError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class InsufficientCreditsError(MeteringAPIError):
    def __init__(self, detail: str, reason: str, credits_remaining: Decimal) -> None:
        super().__init__(402, detail)
        self.reason = reason  # insufficient_credits or monthly_cap_reached
        self.credits_remaining = credits_remaining


class MeteringClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 2.0,
        retries: int = 3,
        backoff: float = 0.05,
        transport: httpx.AsyncBaseTransport | None = None,
        http: HttpKind = "auto",
    ) -> None:
        """transport: an httpx transport (then httpx is used); http: "aiohttp", "httpx", or
        "auto" (aiohttp when installed and no transport is given)."""
        headers = {"Authorization": f"Bearer {api_key}"}
        self._http = make_http(http, base_url, headers, timeout, transport)
        self.retries = retries
        self.backoff = backoff

    async def __aenter__(self) -> MeteringClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def debit(
        self,
        user_id: str,
        amount: Amount | None = None,
        *,
        request_id: str | None = None,
        model: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        metadata: dict[str, Any] | None = None,
        cached_input_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        reasoning_tokens: int | None = None,
    ) -> DebitResult:
        """Charge credits; without an amount the gateway prices model and tokens. input_tokens
        counts only uncached input that wrote no cache; cached_input_tokens were read from the
        provider's cache, cache_write_tokens written to it; output_tokens includes
        reasoning_tokens."""
        body = _drop_none(
            {
                "user_id": user_id,
                "amount": _str(amount),
                "request_id": request_id or _rid(),
                "model": model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "metadata": metadata,
                "cached_input_tokens": cached_input_tokens,
                "cache_write_tokens": cache_write_tokens,
                "reasoning_tokens": reasoning_tokens,
            }
        )
        return await self._call("POST", "/api/v1/credits/debit", body, DebitResult)

    async def balance(self, user_id: str) -> Balance:
        return await self._call(
            "GET", "/api/v1/credits/balance", None, Balance, params={"user_id": user_id}
        )

    async def prices(self) -> PriceList:
        """Every model's price at the gateway (credits per million input and output tokens)."""
        return await self._call("GET", "/api/v1/pricing", None, PriceList)

    async def grants(self, user_id: str, *, include_closed: bool = False) -> GrantList:
        """The user's credit blocks in spending order (and its closed ones, newest first)."""
        params = {"include": "closed"} if include_closed else None
        path = f"/api/v1/credits/{quote(user_id, safe='')}/grants"
        return await self._call("GET", path, None, GrantList, params=params)

    def reserve(
        self,
        user_id: str,
        amount: Amount,
        *,
        request_id: str | None = None,
        ttl_seconds: int = 300,
    ) -> Hold:
        """A hold for a call whose cost is known at its end; use with `async with`."""
        return Hold(self, user_id, _str(amount) or "0", request_id or _rid(), ttl_seconds)

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        kind: type[T],
        params: dict[str, str] | None = None,
    ) -> T:
        payload = None if body is None else msgspec.json.encode(body)
        for attempt in range(self.retries + 1):
            try:
                r = await self._http.request(method, path, payload, params)
            except GatewayUnreachable:
                if attempt == self.retries:
                    raise
            else:
                if r.status < 500 or attempt == self.retries:
                    return _answer(r, kind)
            await asyncio.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")


class Hold:
    """`async with client.reserve(...) as hold:` reserves on entry and releases on exit unless
    `await hold.commit(...)` charged it."""

    def __init__(
        self, client: MeteringClient, user_id: str, amount: str, request_id: str, ttl_seconds: int
    ) -> None:
        self.client = client
        self.body = {
            "user_id": user_id,
            "amount": amount,
            "request_id": request_id,
            "ttl_seconds": ttl_seconds,
        }
        self.reservation: Reservation | None = None
        self.committed: CommitResult | None = None

    async def __aenter__(self) -> Hold:
        self.reservation = await self.client._call(
            "POST", "/api/v1/credits/reservations", self.body, Reservation
        )
        return self

    async def commit(
        self,
        amount: Amount | None = None,
        *,
        model: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        metadata: dict[str, Any] | None = None,
        cached_input_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        reasoning_tokens: int | None = None,
    ) -> CommitResult:
        """Charge the hold the call's cost (an amount, or model and tokens for the gateway to
        price, counted as for debit()); the rest of the hold goes back."""
        assert self.reservation is not None, "use the hold inside `async with`"
        body = _drop_none(
            {
                "amount": _str(amount),
                "model": model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "metadata": metadata,
                "cached_input_tokens": cached_input_tokens,
                "cache_write_tokens": cache_write_tokens,
                "reasoning_tokens": reasoning_tokens,
            }
        )
        path = f"/api/v1/credits/reservations/{self.reservation.reservation_id}/commit"
        self.committed = await self.client._call("POST", path, body, CommitResult)
        return self.committed

    async def extend(self, ttl_seconds: int) -> Reservation:
        """Keep the hold at least ttl_seconds from now (on the gateway's clock), for a call that
        outlives its hold; MeteringAPIError 409 once it expired or was settled."""
        assert self.reservation is not None, "use the hold inside `async with`"
        path = f"/api/v1/credits/reservations/{self.reservation.reservation_id}/extend"
        body = {"ttl_seconds": ttl_seconds}
        self.reservation = await self.client._call("POST", path, body, Reservation)
        return self.reservation

    async def release(self) -> ReleaseResult:
        assert self.reservation is not None, "use the hold inside `async with`"
        path = f"/api/v1/credits/reservations/{self.reservation.reservation_id}"
        return await self.client._call("DELETE", path, None, ReleaseResult)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.committed is None and self.reservation is not None:
            await self.release()


def _answer(r: Answer, kind: type[T]) -> T:
    if r.status < 300:
        return msgspec.json.decode(r.content, type=kind)
    data: Any = {}
    if r.content_type.startswith("application/json"):
        try:
            data = msgspec.json.decode(r.content)
        except msgspec.DecodeError:
            data = {}
    data = data if isinstance(data, dict) else {}
    detail = str(data.get("detail", r.content.decode("utf-8", "replace")))
    problems = [e for e in data.get("extra") or [] if isinstance(e, dict) and e.get("message")]
    if problems:  # a 400 names each field and its rule: "amount: must be a decimal string ..."
        listed = "; ".join(f"{e.get('key') or 'body'}: {e['message']}" for e in problems)
        detail = f"{detail}: {listed}"
    if r.status == 402:
        raise InsufficientCreditsError(
            detail, data.get("reason", ""), Decimal(data.get("credits_remaining", "0"))
        )
    raise MeteringAPIError(r.status, detail)


def _rid() -> str:
    return f"sdk-{uuid.uuid4()}"


def _str(amount: Amount | None) -> str | None:
    """The amount in the gateway's grammar: a Decimal without an exponent (str() would give
    Decimal('1E-7') as '1E-7', which the gateway refuses)."""
    if amount is None or isinstance(amount, str):
        return amount
    return format(Decimal(amount), "f")


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}
