"""Metering LiteLLM calls with the gateway: reserve before the call, commit the priced usage
after it, release when it fails. Two ways in:

- The LiteLLM SDK: ``await metered_completion(metering, "alice", "0.50", model=..., messages=...)``
  holds 0.50 credits of alice's (a 402 refuses the call before any tokens are bought), makes the
  call, and commits its model and token counts: the gateway prices them from its model pricing
  (``/api/v1/pricing``) and returns the rest of the hold. Any exception releases the hold. With
  ``stream=True`` it returns the stream; the hold settles when the stream ends, with the usage
  the stream reports (or, closed early, the prompt and the text received).
- The LiteLLM proxy: ``MeteringProxyHandler`` is a CustomLogger. In the proxy's config.yaml::

      litellm_settings:
        callbacks: metering_client.litellm.proxy_handler

  with METERING_URL, METERING_API_KEY (a key with the debit and read scopes) and METERING_PAYER
  (who pays, below) in the proxy's environment. Each call's hold is its estimated cost: the
  prompt's tokens and ``max_tokens`` (METERING_DEFAULT_MAX_TOKENS, 4096, when the request sets
  none) at the model's gateway price, rounded up, within METERING_HOLD_MIN (0.01) and
  METERING_HOLD_MAX (10.00); METERING_HOLD sets a fixed hold instead. A model without a gateway
  price is refused before the call (it could not be charged).
  Before each call the proxy runs ``async_pre_call_hook`` (reserve for the payer; refused with
  the gateway's message when the payer is out of credits), then ``async_log_success_event``
  (commit) or ``async_log_failure_event`` (release). Each hold has a request id of the
  handler's own (a client's ``x-litellm-call-id`` header cannot make two calls one); one the
  proxy never settles expires in the gateway by itself (``ttl_seconds``).

Who pays (METERING_PAYER, default ``end_user,user``): the first of these sources, in the order
given, that names someone: ``end_user`` (the key's end user, which the proxy takes from the
request's ``user``), ``user`` (the request body's ``user``), ``header:NAME`` (a request header),
``key_metadata:FIELD`` / ``team_metadata:FIELD`` (the LiteLLM key's or team's metadata),
``key_user`` (the key's own user_id; behind the master key that is one shared placeholder, so it
is never a default). No payer: the call is refused before the model is called.

Refusals (no payer, unpriced model, no credits, cap reached) reach the OpenAI client as 400 with
the gateway's message, as LiteLLM's own budget checks answer (the SDK does not retry a 400); a
gateway that cannot be reached refuses with 503 (METERING_FAIL_OPEN=1 lets such calls through
unmetered instead: free calls, a risk to choose knowingly).

Needs LiteLLM: ``pip install 'metering-client[litellm]'`` (clients/python); the gateway does
not depend on it.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from types import SimpleNamespace
from typing import Any

import httpx
import litellm
from litellm.integrations.custom_logger import CustomLogger

from metering_client import Hold, InsufficientCreditsError, MeteringAPIError, MeteringClient
from metering_client.schemas import PriceInfo


async def metered_completion(
    metering: MeteringClient, user_id: str, hold: str, **completion: Any
) -> Any:
    """litellm.acompletion(**completion), paid from user_id's credits. With stream=True the
    answer is a MeteredStream: iterate it as LiteLLM's stream; the hold settles when the stream
    ends, with the usage the stream reported (stream_options include_usage is turned on)."""
    call_id = completion.setdefault("litellm_call_id", None) or os.urandom(8).hex()
    completion["litellm_call_id"] = call_id
    h = metering.reserve(user_id, hold, request_id=f"litellm-{call_id}")
    if completion.get("stream"):
        completion["stream_options"] = {
            **(completion.get("stream_options") or {}),
            "include_usage": True,
        }
        await h.__aenter__()
        try:
            stream = await litellm.acompletion(**completion)
        except BaseException:
            await h.release()
            raise
        return MeteredStream(h, stream, completion)
    async with h:
        response = await litellm.acompletion(**completion)
        await _commit(h, response, completion.get("model"))
        return response


class MeteredStream:
    """A LiteLLM stream whose hold is committed when it ends: with the usage its last chunk
    reported, or (a stream closed early, or one without usage) the prompt's and the received
    text's token counts, so a stream is never free."""

    def __init__(self, hold: Hold, stream: Any, completion: dict[str, Any]) -> None:
        self.hold, self.stream, self.completion = hold, stream, completion
        self._chunks = self._run()

    def __aiter__(self) -> MeteredStream:
        return self

    async def __anext__(self) -> Any:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        await self._chunks.aclose()

    async def _run(self) -> AsyncGenerator[Any, None]:
        usage, text = None, []
        try:
            async for chunk in self.stream:
                usage = getattr(chunk, "usage", None) or usage
                for choice in getattr(chunk, "choices", None) or []:
                    text.append(getattr(choice.delta, "content", None) or "")
                yield chunk
        finally:
            model = self.completion.get("model")
            if usage is None:
                prompt = litellm.token_counter(
                    model=model, messages=self.completion.get("messages") or []
                )
                output = litellm.token_counter(model=model, text="".join(text)) if text else 0
                usage = SimpleNamespace(prompt_tokens=prompt, completion_tokens=output)
            await _commit(self.hold, SimpleNamespace(usage=usage, model=None), model)


async def _commit(hold: Hold, response: Any, model: str | None) -> None:
    usage = getattr(response, "usage", None)
    await hold.commit(
        model=getattr(response, "model", None) or model,
        input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
    )


log = logging.getLogger("metering.litellm")

DEFAULT_PAYER = "end_user,user"
PRICES_TTL = 30.0  # seconds the handler keeps the gateway's price list


@dataclass(frozen=True)
class HoldSizing:
    floor: Decimal = Decimal("0.01")
    ceiling: Decimal = Decimal("10")
    default_output: int = 4096  # output tokens assumed when the request sets no max_tokens


def estimate(price: PriceInfo, prompt: int, output: int, sizing: HoldSizing) -> Decimal:
    """A call's most likely top cost: prompt and output tokens at the model's price, rounded
    up to the micro-credit, within the sizing's floor and ceiling."""
    cost = (
        prompt * Decimal(price.input_per_million) + output * Decimal(price.output_per_million)
    ) / 1_000_000
    cost = cost.quantize(Decimal("0.000001"), rounding=ROUND_CEILING)
    return min(max(cost, sizing.floor), sizing.ceiling)


_SOURCES = ("end_user", "user", "key_user", "header", "key_metadata", "team_metadata")


class MeteringRefused(ValueError):
    """A proxied call refused before the model call, with the status its client gets."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code, self.detail = status_code, detail


def refuse(status: int, detail: str) -> Exception:
    """What a pre-call hook raises to refuse a call: inside the proxy, FastAPI's HTTPException
    (the proxy answers it with this status and detail, as LiteLLM's own budget checks do:
    400, which the OpenAI SDK does not retry); elsewhere MeteringRefused."""
    try:
        fastapi = importlib.import_module("fastapi")  # present inside the proxy only
    except ImportError:
        return MeteringRefused(status, detail)
    refused: Exception = fastapi.HTTPException(status_code=status, detail=detail)
    return refused


def check_payer_rule(rule: str) -> None:
    """A METERING_PAYER rule: sources joined by ','; ValueError naming a bad one."""
    for source in rule.split(","):
        kind, _, name = source.strip().partition(":")
        if kind not in _SOURCES or (kind in _SOURCES[3:]) != bool(name):
            raise ValueError(
                f"METERING_PAYER: {source.strip()!r} is not one of end_user, user, key_user, "
                "header:NAME, key_metadata:FIELD, team_metadata:FIELD"
            )


def payer_of(rule: str, key: Any, data: dict[str, Any]) -> str | None:
    """Who pays for a proxied call under rule (METERING_PAYER): the first source that names
    someone (a non-empty string), or None."""
    for source in rule.split(","):
        kind, _, name = source.strip().partition(":")
        found: Any = None
        if kind == "end_user":
            found = getattr(key, "end_user_id", None)
        elif kind == "user":
            found = data.get("user")
        elif kind == "key_user":
            found = getattr(key, "user_id", None)
        elif kind == "header":
            request = data.get("proxy_server_request") or {}
            headers = {k.lower(): v for k, v in (request.get("headers") or {}).items()}
            found = headers.get(name.lower())
        elif kind in ("key_metadata", "team_metadata"):
            found = (getattr(key, kind.replace("key_", ""), None) or {}).get(name)
        if isinstance(found, str) and found.strip():
            return found
    return None


class MeteringProxyHandler(CustomLogger):
    def __init__(
        self,
        metering: MeteringClient,
        hold: str | None = None,
        payer: str = DEFAULT_PAYER,
        sizing: HoldSizing | None = None,
        fail_open: bool = False,
    ) -> None:
        """hold: a fixed hold per call; None (the default) sizes each hold from its estimate.
        fail_open: when the gateway cannot be reached, let calls through unmetered (free: a
        risk to choose knowingly) instead of refusing them with 503."""
        super().__init__()
        check_payer_rule(payer)
        self.metering = metering
        self.hold = hold
        self.payer = payer
        self.sizing = sizing or HoldSizing()
        self.fail_open = fail_open
        self.holds: dict[str, Hold] = {}  # call id -> its hold, until the call ends
        self.settling = 0  # commits and releases on their way to the gateway
        self.failed_settlements = 0  # commits and releases that failed after their retries
        self._prices: dict[str, PriceInfo] = {}
        self._prices_at = -math.inf

    async def price_of(self, model: str) -> PriceInfo | None:
        """The model's gateway price (the list is read again after PRICES_TTL seconds)."""
        if time.monotonic() - self._prices_at > PRICES_TTL or model not in self._prices:
            listed = await self.metering.prices()
            self._prices = {p.model: p for p in listed.prices}
            self._prices_at = time.monotonic()
        return self._prices.get(model)

    async def hold_for(self, data: dict[str, Any]) -> str:
        """The hold for a call: fixed, or its estimate; refused when the model has no price."""
        model = str(data.get("model") or "")
        price = await self.price_of(model)
        if price is None:
            raise refuse(
                400,
                f"metering: model {model!r} has no price at the gateway, so its use could not "
                "be charged; refused before the call (PUT /api/v1/pricing/{model})",
            )
        if self.hold is not None:
            return self.hold
        prompt = litellm.token_counter(model=model, messages=data.get("messages") or [])
        output = data.get("max_tokens") or data.get("max_completion_tokens")
        return str(estimate(price, prompt, int(output or self.sizing.default_output), self.sizing))

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        user = payer_of(self.payer, user_api_key_dict, data)
        if not user:
            raise refuse(
                400,
                f"metering: this request names no one to charge (METERING_PAYER={self.payer!r})",
            )
        call_id = data.get("litellm_call_id") or str(uuid.uuid4())
        if call_id in self.holds:  # a client-sent call id already in flight: make this its own
            call_id = str(uuid.uuid4())
        data["litellm_call_id"] = call_id
        try:
            amount = await self.hold_for(data)
            # the gateway's request id is the handler's own, never a client-sent call id alone
            hold = self.metering.reserve(user, amount, request_id=f"litellm-{uuid.uuid4()}")
            await hold.__aenter__()
        except InsufficientCreditsError as exc:
            raise refuse(400, f"metering: {exc.reason or 'insufficient_credits'}: {exc}") from None
        except (httpx.TransportError, MeteringAPIError) as exc:
            if isinstance(exc, MeteringAPIError) and exc.status < 500:
                raise refuse(400, f"metering: {exc}") from None
            if self.fail_open:  # documented risk: the call goes ahead unmetered
                log.warning("metering unreachable (%s): call %s not metered", exc, call_id)
                return data
            raise refuse(503, "metering is unavailable; nothing was charged, retry later") from None
        self.holds[call_id] = hold
        return data

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        hold = self.holds.pop(str(kwargs.get("litellm_call_id")), None)
        if hold is not None:
            await self._settle(_commit(hold, response_obj, kwargs.get("model")), hold)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        hold = self.holds.pop(str(kwargs.get("litellm_call_id")), None)
        if hold is not None:
            await self._settle(hold.release(), hold)

    async def _settle(self, call: Awaitable[Any], hold: Hold) -> None:
        """A commit or release, counted in `settling` while it is on its way. One that still
        fails after the client's retries (same reservation, so never twice) is logged with its
        reservation id and counted in `failed_settlements`, for an operator to follow up (its
        hold expires in the gateway), never dropped silently or raised into LiteLLM."""
        self.settling += 1
        try:
            await call
        except (httpx.HTTPError, MeteringAPIError) as exc:
            self.failed_settlements += 1
            held = hold.reservation.reservation_id if hold.reservation else "?"
            log.error("metering: settling reservation %s failed: %s", held, exc)
        finally:
            self.settling -= 1


def _from_env() -> MeteringProxyHandler | None:
    url, key = os.environ.get("METERING_URL"), os.environ.get("METERING_API_KEY")
    if not (url and key):
        return None
    env = os.environ.get
    sizing = HoldSizing(
        Decimal(env("METERING_HOLD_MIN", "0.01")),
        Decimal(env("METERING_HOLD_MAX", "10")),
        int(env("METERING_DEFAULT_MAX_TOKENS", "4096")),
    )
    return MeteringProxyHandler(
        MeteringClient(url, key),
        env("METERING_HOLD") or None,
        env("METERING_PAYER", DEFAULT_PAYER),
        sizing,
        env("METERING_FAIL_OPEN", "") in ("1", "true", "yes"),
    )


proxy_handler = _from_env()
