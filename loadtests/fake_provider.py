"""A stand-in for an OpenAI-compatible provider, for the LiteLLM proxy tests and the proxy
latency script: the proxy calls it over HTTP as it would call a real provider (no mock inside
LiteLLM), so retries, fallbacks, streams and usage go through LiteLLM's own code.

POST /v1/chat/completions answers by the upstream model's name:
- ``fail``: 500 every time (a provider that is down);
- ``flaky``: 500 on every other call (a retry succeeds);
- anything else: "Hello from upstream" with usage ``prompt_tokens`` 10, ``completion_tokens``
  20 (or the request's ``max_tokens`` if fewer), of which 4 ``reasoning_tokens``, and 6 cached
  prompt tokens (OpenAI's usage shape).
A last message starting ``slow N S`` streams N chunks S seconds apart. Streams end with a usage
chunk when the request asks for one (``stream_options.include_usage``).
GET /calls?says=TEXT answers how many completion requests had TEXT as their last message (so a
test sees whether a refused call reached the provider; the proxy does not pass ``user`` on).

    python -m loadtests.fake_provider --port 8900
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import time
import urllib.parse
from typing import Any

import msgspec

Scope = dict[str, Any]


def usage(req: dict[str, Any]) -> dict[str, Any]:
    """10 prompt tokens (6 cached) and 20 completion tokens (4 reasoning), or fewer completion
    tokens when the request's max_tokens says so."""
    limit = req.get("max_completion_tokens") or req.get("max_tokens") or 20
    out = min(20, int(limit))
    return {
        "prompt_tokens": 10,
        "completion_tokens": out,
        "total_tokens": 10 + out,
        "prompt_tokens_details": {"cached_tokens": 6},
        "completion_tokens_details": {"reasoning_tokens": min(4, out)},
    }


TEXT = "Hello from upstream"
_calls = itertools.count()
_by_text: collections.Counter[str] = collections.Counter()


def _chunk(model: str, delta: dict[str, Any], usage: Any = None, finish: Any = None) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = usage
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


async def _body(receive: Any) -> dict[str, Any]:
    data = b""
    while True:
        message = await receive()
        data += message.get("body", b"")
        if not message.get("more_body"):
            decoded: dict[str, Any] = msgspec.json.decode(data or b"{}")
            return decoded


async def _send_json(send: Any, status: int, body: Any) -> None:
    payload = msgspec.json.encode(body)
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/calls":
        query = urllib.parse.parse_qs(scope["query_string"].decode())
        await _send_json(send, 200, {"calls": _by_text[query.get("says", [""])[0]]})
        return
    if not scope["path"].endswith("/chat/completions"):
        await _send_json(send, 404, {"error": {"message": "not found"}})
        return
    req = await _body(receive)
    model = str(req.get("model", ""))
    n = next(_calls)
    if model == "fail" or (model == "flaky" and n % 2 == 0):
        await _send_json(send, 500, {"error": {"message": "upstream is down", "type": "server"}})
        return
    last = str((req.get("messages") or [{}])[-1].get("content", ""))
    _by_text[last] += 1
    chunks, pause = 4, 0.0
    if last.startswith("slow "):
        _, count, seconds = last.split()[:3]
        chunks, pause = int(count), float(seconds)
    if not req.get("stream"):
        await _send_json(
            send,
            200,
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": TEXT},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage(req),
            },
        )
        return
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    words = [f"{w} " for w in TEXT.split()] + ["."] * max(0, chunks - 3)
    for i, word in enumerate(words[:chunks]):
        if i and pause:
            await asyncio.sleep(pause)
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
        await send({"type": "http.response.body", "body": _chunk(model, delta), "more_body": True})
    tail = _chunk(model, {}, finish="stop")
    if (req.get("stream_options") or {}).get("include_usage"):
        tail += _chunk(model, {}, usage=usage(req))
    await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8900)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
