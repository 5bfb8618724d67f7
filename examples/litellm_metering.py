"""Metering LiteLLM calls with the gateway: reserve before the call, commit the priced usage
after it, release when it fails. Two ways in:

- The LiteLLM SDK: ``await metered_completion(metering, "alice", "0.50", model=..., messages=...)``
  holds 0.50 credits of alice's (a 402 refuses the call before any tokens are bought), makes the
  call, and commits its model and token counts: the gateway prices them from its model pricing
  (``/api/v1/pricing``) and returns the rest of the hold. Any exception releases the hold.
- The LiteLLM proxy: ``MeteringProxyHandler`` is a CustomLogger. In the proxy's config.yaml::

      litellm_settings:
        callbacks: examples.litellm_metering.proxy_handler

  with METERING_URL, METERING_API_KEY (a key with the debit scope) and METERING_HOLD (credits to
  hold per call, default 0.50) in the proxy's environment. Before each call the proxy runs
  ``async_pre_call_hook`` (reserve for the key's user; refused with the gateway's message when
  the user is out of credits), then ``async_log_success_event`` (commit) or
  ``async_log_failure_event`` (release). Holds are keyed by LiteLLM's call id; one the proxy
  never settles expires in the gateway by itself (``ttl_seconds``).

Needs ``pip install litellm``; it is not a dependency of the gateway.
"""

from __future__ import annotations

import os
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger

from metering_client import Hold, MeteringClient


async def metered_completion(
    metering: MeteringClient, user_id: str, hold: str, **completion: Any
) -> Any:
    """litellm.acompletion(**completion), paid from user_id's credits."""
    call_id = completion.setdefault("litellm_call_id", None) or os.urandom(8).hex()
    completion["litellm_call_id"] = call_id
    async with metering.reserve(user_id, hold, request_id=f"litellm-{call_id}") as h:
        response = await litellm.acompletion(**completion)
        await _commit(h, response, completion.get("model"))
        return response


async def _commit(hold: Hold, response: Any, model: str | None) -> None:
    usage = getattr(response, "usage", None)
    await hold.commit(
        model=getattr(response, "model", None) or model,
        input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
    )


class MeteringProxyHandler(CustomLogger):
    def __init__(self, metering: MeteringClient, hold: str = "0.50") -> None:
        super().__init__()
        self.metering = metering
        self.hold = hold
        self.holds: dict[str, Hold] = {}

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        user = getattr(user_api_key_dict, "user_id", None) or data.get("user")
        if not user:
            raise ValueError("metering: this request has no user to charge")
        call_id = data.setdefault("litellm_call_id", os.urandom(8).hex())
        hold = self.metering.reserve(user, self.hold, request_id=f"litellm-{call_id}")
        await hold.__aenter__()  # raises InsufficientCreditsError (402) when out of credits
        self.holds[call_id] = hold
        return data

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        hold = self.holds.pop(str(kwargs.get("litellm_call_id")), None)
        if hold is not None:
            await _commit(hold, response_obj, kwargs.get("model"))

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        hold = self.holds.pop(str(kwargs.get("litellm_call_id")), None)
        if hold is not None:
            await hold.release()


def _from_env() -> MeteringProxyHandler | None:
    url, key = os.environ.get("METERING_URL"), os.environ.get("METERING_API_KEY")
    if not (url and key):
        return None
    return MeteringProxyHandler(MeteringClient(url, key), os.environ.get("METERING_HOLD", "0.50"))


proxy_handler = _from_env()
