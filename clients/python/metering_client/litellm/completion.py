"""The LiteLLM SDK wrapper: metered_completion() and the stream that settles when it ends."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from types import SimpleNamespace
from typing import Any, TypedDict

import litellm

from metering_client import Hold, MeteringClient


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
        await commit_usage(h, response, completion.get("model"))
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
            await commit_usage(self.hold, SimpleNamespace(usage=usage, model=None), model)


async def commit_usage(hold: Hold, response: Any, model: str | None) -> None:
    """Commit a call's usage, priced by the model name the caller used (the gateway's price
    key; a provider answers with names of its own, such as dated versions)."""
    await hold.commit(model=model, **usage_counts(getattr(response, "usage", None)))


class UsageCounts(TypedDict, total=False):
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int


def usage_counts(usage: Any) -> UsageCounts:
    """A LiteLLM usage in the gateway's token counts. LiteLLM reports every provider the OpenAI
    way: prompt_tokens includes the input read from the cache (prompt_tokens_details
    .cached_tokens; Anthropic's cache_read_input_tokens) and written to it (cache_write_tokens;
    Anthropic's cache_creation_input_tokens), completion_tokens includes the reasoning
    (completion_tokens_details.reasoning_tokens). The gateway's input_tokens is the rest."""
    prompt = _int(usage, "prompt_tokens")
    details = getattr(usage, "prompt_tokens_details", None)
    cached = _int(details, "cached_tokens") or _int(usage, "cache_read_input_tokens")
    written = _int(details, "cache_write_tokens") or _int(usage, "cache_creation_input_tokens")
    output = _int(usage, "completion_tokens")
    reasoning = _int(getattr(usage, "completion_tokens_details", None), "reasoning_tokens")
    counts = UsageCounts(input_tokens=max(0, prompt - cached - written), output_tokens=output)
    if cached:
        counts["cached_input_tokens"] = cached
    if written:
        counts["cache_write_tokens"] = written
    if reasoning:
        counts["reasoning_tokens"] = min(reasoning, output)
    return counts


def _int(obj: Any, name: str) -> int:
    value = getattr(obj, name, None) if obj is not None else None
    return value if isinstance(value, int) and value > 0 else 0
