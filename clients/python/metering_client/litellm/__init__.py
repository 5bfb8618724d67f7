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
  METERING_HOLD_MAX (10.00); a payer with less than the estimate but at least the floor holds
  what they have, with the answer cut (``max_tokens``) at what that pays for (a provider that
  gives more anyway: the call is charged the whole hold, never more than the payer had).
  METERING_HOLD sets a fixed hold instead. A model without a gateway price is refused before
  the call (it could not be charged).
  Before each call the proxy runs ``async_pre_call_hook`` (reserve for the payer), LiteLLM runs
  ``async_pre_call_deployment_hook`` just before the provider is called (a chat completion waits
  there for its reserve, which ran meanwhile, and is refused with the gateway's message when
  the payer is out of credits: METERING_OVERLAP=0 waits in the pre-call hook instead, as other
  call types always do), then ``async_log_success_event``
  (commit, priced by the model group that answered) or, once the whole request has failed,
  ``async_post_call_failure_hook`` (release). A deployment's failure that the proxy retries or
  falls back from keeps the hold: it belongs to the request. Each hold has a request id of
  the handler's own, and the request's metadata names its hold (a client's
  ``x-litellm-call-id`` header, the same for several requests, cannot make two calls one). Holds
  live METERING_HOLD_TTL seconds (300) and are extended while their call runs, for up to
  METERING_MAX_CALL_SECONDS (3600); a hold the proxy never settles expires in the gateway by
  itself. A stream asks the provider for its usage (``stream_options.include_usage``) and is
  committed when it ends.

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

from typing import Any

from metering_client.litellm.completion import MeteredStream, metered_completion
from metering_client.litellm.proxy import MeteringProxyHandler, from_env
from metering_client.litellm.rules import (
    DEFAULT_PAYER,
    HoldSizing,
    MeteringRefused,
    check_payer_rule,
    estimate,
    payer_of,
    refuse,
)

__all__ = [
    "DEFAULT_PAYER",
    "HoldSizing",
    "MeteredStream",
    "MeteringProxyHandler",
    "MeteringRefused",
    "check_payer_rule",
    "estimate",
    "metered_completion",
    "payer_of",
    "refuse",
]

_handler: MeteringProxyHandler | None = None


def __getattr__(name: str) -> Any:
    """proxy_handler, what the proxy's config names (litellm_settings: callbacks:
    metering_client.litellm.proxy_handler), is made from the environment when the proxy first
    looks it up, so importing this package elsewhere needs none of METERING_URL and
    METERING_API_KEY; a proxy started without them fails at once, saying which is missing."""
    global _handler
    if name != "proxy_handler":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _handler is None:
        _handler = from_env()
    return _handler
