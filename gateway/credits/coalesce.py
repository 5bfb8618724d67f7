"""Coalescing: script calls made in the same event-loop tick go to Redis as one pipeline.

Under load many requests are in flight at once; instead of one round trip (and one pass through
redis-py's connection pool and retry wrapper) per call, the calls queued during a tick are sent
together with EVALSHA straight into a pipeline, and each caller gets its own answer. A lone call
still costs one round trip; nothing waits for a batch to fill.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Call = tuple[AsyncScript, list[str], list[Any], "asyncio.Future[Any]"]


class Coalescer:
    def __init__(self, redis: Redis, max_batch: int = 512) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self._queue: list[Call] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()
        self.batches = 0  # pipelines sent (for tests and the benchmark)
        self.calls = 0

    async def run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, future))
        if len(self._queue) >= self.max_batch:
            self._dispatch()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue, []
        if batch:
            task = asyncio.ensure_future(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Call]) -> None:
        self.batches += 1
        self.calls += len(batch)
        try:
            answers = await self._pipeline(batch)
            missing = [i for i, a in enumerate(answers) if isinstance(a, NoScriptError)]
            if missing:  # Redis restarted or SCRIPT FLUSH: load and send those again
                for script in {batch[i][0] for i in missing}:
                    await self.redis.script_load(script.script)
                again = await self._pipeline([batch[i] for i in missing])
                for i, answer in zip(missing, again, strict=True):
                    answers[i] = answer
        except BaseException as exc:  # the connection failed: every caller gets the error
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), answer in zip(batch, answers, strict=True):
            if future.done():
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _pipeline(self, batch: list[Call]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args, _ in batch:
                # as a plain command: redis-py refuses pipe.evalsha() on a cluster, but routes
                # EVALSHA by its keys (all of one slot) like any other command
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
