"""MeteringProxyHandler: the LiteLLM proxy's callback (pre-call hold, commit on success,
release when the request fails, holds kept alive while their calls run)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger

from metering_client import Hold, InsufficientCreditsError, MeteringAPIError, MeteringClient
from metering_client.http import GatewayUnreachable, HttpKind
from metering_client.litellm.completion import commit_usage, usage_counts
from metering_client.litellm.metrics import (
    LATE_COMMITS,
    REFUSALS,
    SETTLEMENT_FAILURES,
    SHORT_COMMITS,
)
from metering_client.litellm.rules import (
    DEFAULT_PAYER,
    HoldSizing,
    check_payer_rule,
    estimate,
    payer_of,
    refuse,
)
from metering_client.schemas import PriceInfo

log = logging.getLogger("metering.litellm")

HOLD_KEY = "metering_hold"  # the request metadata's field naming the request's hold
PRICES_TTL = 30.0  # seconds the handler keeps the gateway's price list


# The call types whose provider call LiteLLM precedes with async_pre_call_deployment_hook in
# the proxy's own event loop (chat completions): their reserve overlaps the proxy's work from
# the pre-call hook to that hook, which waits for it and refuses there. Any other call type
# waits for its reserve in the pre-call hook.
OVERLAPPED = frozenset({"completion", "acompletion"})

# What a reserve came to: the hold (None: the gateway could not be reached and fail-open lets
# the call through unmetered), and the request's max-tokens field with the cut to it that a
# short payer's hold pays for, if any.
_Admission = tuple[Hold | None, str, int | None]


@dataclass
class _Call:
    """A proxied request's hold, from the pre-call hook until the request ends."""

    user: str
    admission: asyncio.Task[_Admission]  # the reserve, started by the pre-call hook
    started: float  # time.monotonic()
    extended: float

    @property
    def hold(self) -> Hold | None:
        """The hold, once the reserve has answered with one."""
        done = self.admission.done() and not self.admission.cancelled()
        if not done or self.admission.exception() is not None:
            return None
        return self.admission.result()[0]


class MeteringProxyHandler(CustomLogger):
    def __init__(
        self,
        metering: MeteringClient,
        hold: str | None = None,
        payer: str = DEFAULT_PAYER,
        sizing: HoldSizing | None = None,
        fail_open: bool = False,
        ttl_seconds: int = 300,
        max_call_seconds: float = 3600,
        overlap: bool = True,
    ) -> None:
        """hold: a fixed hold per call; None (the default) sizes each hold from its estimate.
        fail_open: when the gateway cannot be reached, let calls through unmetered (free: a
        risk to choose knowingly) instead of refusing them with 503.
        ttl_seconds: each hold's time to live; a call still running after a third of it has
        its hold extended, again and again, for up to max_call_seconds (a request the proxy
        never ends then gives its credits back when the hold expires).
        overlap: let a chat completion's reserve run while the proxy prepares the call, and
        wait for it only just before the provider is called (LiteLLM's deployment hook);
        False waits in the pre-call hook (a LiteLLM without that hook always does)."""
        super().__init__()
        check_payer_rule(payer)
        self.metering = metering
        self.hold = hold
        self.payer = payer
        self.sizing = sizing or HoldSizing()
        self.fail_open = fail_open
        self.ttl_seconds = ttl_seconds
        self.max_call_seconds = max_call_seconds
        self.overlap = overlap and hasattr(litellm.utils, "async_pre_call_deployment_hook")
        self.holds: dict[str, _Call] = {}  # HOLD_KEY -> the hold, until the request ends
        self.settling = 0  # commits and releases on their way to the gateway
        self.failed_settlements = 0  # commits and releases that failed after their retries
        self.late_commits = 0  # calls whose hold had expired, charged by a direct debit
        self.short_commits = 0  # calls that cost more than the payer had: charged their hold
        self._prices: dict[str, PriceInfo] = {}
        self._prices_at = -math.inf
        self._keeper: asyncio.Task[None] | None = None

    async def price_of(self, model: str) -> PriceInfo | None:
        """The model's gateway price (the list is read again after PRICES_TTL seconds)."""
        if time.monotonic() - self._prices_at > PRICES_TTL or model not in self._prices:
            listed = await self.metering.prices()
            self._prices = {p.model: p for p in listed.prices}
            self._prices_at = time.monotonic()
        return self._prices.get(model)

    async def hold_for(self, data: dict[str, Any]) -> str:
        """The hold for a call: fixed, or its estimate; refused when the model has no price."""
        return (await self._estimate(data))[0]

    async def _estimate(self, data: dict[str, Any]) -> tuple[str, PriceInfo, int]:
        """The call's hold, its model's price and its prompt's tokens."""
        model = str(data.get("model") or "")
        price = await self.price_of(model)
        if price is None:
            REFUSALS.labels("unpriced_model").inc()
            raise refuse(
                400,
                f"metering: model {model!r} has no price at the gateway, so its use could not "
                "be charged; refused before the call (PUT /api/v1/pricing/{model})",
            )
        if self.hold is not None:  # fixed: no estimate, and never a smaller hold
            return self.hold, price, 0
        prompt = litellm.token_counter(model=model, messages=data.get("messages") or [])
        output = data.get("max_tokens") or data.get("max_completion_tokens")
        amount = estimate(price, prompt, int(output or self.sizing.default_output), self.sizing)
        return str(amount), price, prompt

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        user = payer_of(self.payer, user_api_key_dict, data)
        if not user:
            REFUSALS.labels("no_payer").inc()
            raise refuse(
                400,
                f"metering: this request names no one to charge (METERING_PAYER={self.payer!r})",
            )
        if data.get("stream"):  # settle with the usage the provider reports at the stream's end
            data["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
        try:
            sized = await self._estimate(data)  # an unpriced model is refused here
        except (GatewayUnreachable, MeteringAPIError) as exc:  # the price list's lookup
            if self._let_through(exc, user):
                return data
            raise self._refusal(exc) from None
        # the hold's own key, carried in the request's metadata to the proxy's callbacks: the
        # call id can come from a client's header, the same for several requests at once
        key = str(uuid.uuid4())
        now = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._admit(user, data, sized))
        self.holds[key] = _Call(user, task, now, now)
        data["metadata"] = {**(data.get("metadata") or {}), HOLD_KEY: key}
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(self._keep_holds())
        if self.overlap and str(call_type) in OVERLAPPED:
            await asyncio.sleep(0)  # one turn of the loop: the reserve starts on its way
        else:
            await self._admitted(key, data)
        return data

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        """Just before LiteLLM calls the provider (each deployment tried, retries and fallbacks
        included): wait for the call's reserve, refuse the call if it was refused (a 400 is a
        deliberate block to LiteLLM's router: no retry, no fallback), cut max_tokens if the
        hold pays for fewer."""
        key = _hold_key(kwargs)
        if key is None:
            return None
        await self._admitted(key, kwargs)
        return kwargs

    async def _admitted(self, key: str, data: dict[str, Any]) -> None:
        """Wait for the call's reserve; raise its refusal; apply its max_tokens cut to data.
        A refused call stays known until the request ends, so that every attempt is refused."""
        call = self.holds.get(key)
        if call is None:
            return
        _, field, cut = await asyncio.shield(call.admission)  # a cancelled call keeps its hold
        if cut is not None:
            data[field] = cut

    async def _admit(
        self, user: str, data: dict[str, Any], sized: tuple[str, PriceInfo, int]
    ) -> _Admission:
        """The call's reserve, or the refusal the proxy answers with."""
        try:
            return await self._reserve(user, data, sized)
        except (GatewayUnreachable, MeteringAPIError) as exc:
            if self._let_through(exc, user):
                return None, "", None
            raise self._refusal(exc) from None

    def _let_through(self, exc: Exception, user: str) -> bool:
        """Whether fail-open lets a call go ahead unmetered (free: a documented risk) because
        the gateway could not be reached or failed."""
        down = not isinstance(exc, MeteringAPIError) or exc.status >= 500
        if down and self.fail_open:
            log.warning("metering unreachable (%s): a call to %s not metered", exc, user)
        return down and self.fail_open

    @staticmethod
    def _refusal(exc: Exception) -> Exception:
        """What the proxy answers a call the gateway refused or could not be asked about."""
        if isinstance(exc, InsufficientCreditsError):
            REFUSALS.labels(exc.reason or "insufficient_credits").inc()
            return refuse(400, f"metering: {exc.reason or 'insufficient_credits'}: {exc}")
        if isinstance(exc, MeteringAPIError) and exc.status < 500:
            REFUSALS.labels("refused").inc()
            return refuse(400, f"metering: {exc}")
        REFUSALS.labels("gateway_unreachable").inc()
        return refuse(503, "metering is unavailable; nothing was charged, retry later")

    async def _reserve(
        self, user: str, data: dict[str, Any], sized: tuple[str, PriceInfo, int]
    ) -> _Admission:
        """Hold the call's estimate. A payer with less than that but at least the floor holds
        what they have, and the call's answer is cut (max_tokens) at what that pays for: an
        estimate assumes the longest answer, and a small call must still go through."""
        amount, price, prompt = sized
        field = "max_completion_tokens" if "max_completion_tokens" in data else "max_tokens"
        try:
            return await self._hold(user, amount), field, None
        except InsufficientCreditsError as exc:
            have = exc.credits_remaining
            if self.hold is not None or exc.reason != "insufficient_credits":
                raise
            rate = Decimal(price.output_per_million)
            left = have * 1_000_000 - prompt * Decimal(price.input_per_million)
            tokens = int(left // rate) if rate > 0 else self.sizing.default_output
            if have < self.sizing.floor or have >= Decimal(amount) or tokens < 1:
                raise
            return await self._hold(user, format(have, "f")), field, tokens

    async def _hold(self, user: str, amount: str) -> Hold:
        # the gateway's request id is the handler's own, never a client-sent call id alone
        hold = self.metering.reserve(
            user, amount, request_id=f"litellm-{uuid.uuid4()}", ttl_seconds=self.ttl_seconds
        )
        return await hold.__aenter__()

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        metadata = (kwargs.get("litellm_params") or {}).get("metadata") or {}
        call = self.holds.pop(str(metadata.get(HOLD_KEY)), None)
        if call is None:
            return
        logged = kwargs.get("standard_logging_object") or {}
        # priced by the model group that answered (a fallback's, after a fallback): the name
        # the proxy's config gives it, which the operator prices at the gateway
        model = logged.get("model_group") or kwargs.get("model")
        try:
            hold = (await call.admission)[0]
        except Exception:  # refused, yet answered: charged all the same, never free
            log.error("metering: a refused call to %s was answered; charging it", call.user)
            refused = self._late_debit(call, response_obj, model, f"litellm-{uuid.uuid4()}")
            await self._settle(refused, None)
            return
        if hold is not None:  # None: unmetered (fail-open while the gateway was unreachable)
            await self._settle(self._commit(call, hold, response_obj, model), hold)

    # A deployment's failure (async_log_failure_event) is not the request's end: the proxy may
    # retry it or fall back to another model group under the same call id, which keeps the
    # hold. The request has failed only when the proxy runs its post-call failure hook.
    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        call = self.holds.pop(str((request_data.get("metadata") or {}).get(HOLD_KEY)), None)
        if call is None:
            return
        try:
            hold = (await call.admission)[0]
        except Exception:  # refused: nothing is held
            return
        if hold is not None:
            await self._settle(hold.release(), hold)

    async def _commit(self, call: _Call, hold: Hold, response: Any, model: str | None) -> None:
        """The call's priced usage; a hold that expired meanwhile (the gateway was unreachable
        while it should have been extended) is charged by a direct debit of the same usage
        under a request id of its own, so the call is never free."""
        assert hold.reservation is not None
        try:
            await commit_usage(hold, response, model)
        except InsufficientCreditsError:
            # the call cost more than its hold and than the payer has left: it takes the whole
            # hold, everything the payer had (the balance never goes below zero)
            await hold.commit(hold.reservation.held)
            self.short_commits += 1
            SHORT_COMMITS.inc()
            log.warning(
                "metering: reservation %s cost more than its payer had; charged the hold",
                hold.reservation.reservation_id,
            )
        except MeteringAPIError as exc:
            # only a hold that charged nothing (expired, or released by a failure the proxy
            # reported before this success) is charged by a debit; one already committed
            # ("already committed for ...") is never charged again
            unpaid = "was expired" in exc.detail or "was released" in exc.detail
            if exc.status != 409 or not unpaid:
                raise
            await self._late_debit(call, response, model, f"{hold.body['request_id']}-late")
            self.late_commits += 1
            LATE_COMMITS.inc()
            log.warning(
                "metering: reservation %s had expired; charged by a debit",
                hold.reservation.reservation_id,
            )

    async def _late_debit(
        self, call: _Call, response: Any, model: str | None, request_id: str
    ) -> None:
        """A call charged without its hold: its priced usage, debited directly."""
        usage = usage_counts(getattr(response, "usage", None))
        await self.metering.debit(call.user, request_id=request_id, model=model, **usage)

    async def _keep_holds(self) -> None:
        """Every third of the hold's life, extend the holds of calls still running (long
        generations, long streams), so that no hold expires before its call ends."""
        every = self.ttl_seconds / 3
        while self.holds:
            await asyncio.sleep(every / 2)
            now = time.monotonic()
            due = [
                (c, c.hold)
                for c in list(self.holds.values())
                if now - c.extended >= every and now - c.started < self.max_call_seconds
            ]
            for call, hold in due:
                if hold is None:  # refused, unmetered, or its reserve not answered yet
                    continue
                try:
                    await hold.extend(self.ttl_seconds)
                    call.extended = now
                except (GatewayUnreachable, MeteringAPIError) as exc:  # tried again next round
                    log.warning("metering: extending a hold failed: %s", exc)

    async def _settle(self, call: Awaitable[Any], hold: Hold | None) -> None:
        """A commit or release, counted in `settling` while it is on its way. One that still
        fails after the client's retries (same reservation, so never twice) is logged with its
        reservation id and counted in `failed_settlements`, for an operator to follow up (its
        hold expires in the gateway), never dropped silently or raised into LiteLLM."""
        self.settling += 1
        try:
            await call
        except (GatewayUnreachable, MeteringAPIError) as exc:
            self.failed_settlements += 1
            SETTLEMENT_FAILURES.inc()
            held = hold.reservation.reservation_id if hold and hold.reservation else "none"
            log.error("metering: settling reservation %s failed: %s", held, exc)
        finally:
            self.settling -= 1


def from_env() -> MeteringProxyHandler:
    """The handler the proxy's environment describes; ValueError naming what is missing."""
    url, key = os.environ.get("METERING_URL"), os.environ.get("METERING_API_KEY")
    missing = [name for name, v in (("METERING_URL", url), ("METERING_API_KEY", key)) if not v]
    if missing or url is None or key is None:
        raise ValueError(
            f"metering_client.litellm.proxy_handler needs {' and '.join(missing)} in the "
            "proxy's environment: the gateway's URL and a key with the debit and read scopes"
        )
    env = os.environ.get
    sizing = HoldSizing(
        Decimal(env("METERING_HOLD_MIN", "0.01")),
        Decimal(env("METERING_HOLD_MAX", "10")),
        int(env("METERING_DEFAULT_MAX_TOKENS", "4096")),
    )
    return MeteringProxyHandler(
        MeteringClient(url, key, http=_http_kind(env("METERING_HTTP", "auto"))),
        env("METERING_HOLD") or None,
        env("METERING_PAYER", DEFAULT_PAYER),
        sizing,
        env("METERING_FAIL_OPEN", "") in ("1", "true", "yes"),
        int(env("METERING_HOLD_TTL", "300")),
        float(env("METERING_MAX_CALL_SECONDS", "3600")),
        env("METERING_OVERLAP", "1") not in ("0", "false", "no"),
    )


def _http_kind(value: str) -> HttpKind:
    if value not in ("auto", "aiohttp", "httpx"):
        raise ValueError(f"METERING_HTTP must be auto, aiohttp or httpx, not {value!r}")
    return value  # type: ignore[return-value]


def _hold_key(kwargs: dict[str, Any]) -> str | None:
    """The hold key a deployment call's kwargs carry (the proxy's request metadata)."""
    for field in ("metadata", "litellm_metadata"):
        found = (kwargs.get(field) or {}).get(HOLD_KEY)
        if found:
            return str(found)
    return None
