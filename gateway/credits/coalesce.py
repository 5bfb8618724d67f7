"""Coalescing: script calls made in the same event-loop tick go to Redis as one pipeline.

Under load many requests are in flight at once; instead of one round trip (and one pass through
redis-py's connection pool and retry wrapper) per call, the calls queued during a tick are sent
together with EVALSHA straight into a pipeline, and each caller gets its own answer. A lone call
still costs one round trip; nothing waits for a batch to fill.

With durable acknowledgements (gateway/base/durable.py) each pipeline goes to its node with a
beacon write and one WAIT after it, and its answers count only when the replicas confirmed them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from gateway.base.connect import ClientFailed
from gateway.base.durable import NotReplicated, ReplicaAcks
from gateway.credits.ticks import TickBatch

Call = tuple[AsyncScript, list[str], list[Any], "asyncio.Future[Any]"]
ScriptCall = tuple[AsyncScript, list[str], list[Any]]  # a script, its keys, its arguments

# What redis-py raises, besides its own errors, when a connection is closed under a call (seen
# during cluster failovers: a transport gone to None, a closed transport, a reset socket).
CLIENT_FAILURES = (AttributeError, RuntimeError, OSError, EOFError)


class Coalescer:
    def __init__(
        self, redis: Redis, max_batch: int = 512, durable: ReplicaAcks | None = None
    ) -> None:
        self.redis = redis
        self.durable = durable
        self.max_batch = max_batch
        self._ticks: TickBatch[list[Call]] = TickBatch(self._send, list, max_batch)
        self.batches = 0  # pipelines sent (for tests and the benchmark)
        self.calls = 0

    async def run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._ticks.pending.append((script, keys, args, future))
        self._ticks.added()
        return await future

    async def run_in_order(self, calls: list[ScriptCall]) -> list[Any]:
        """Calls of one user that must run in this order (the cold path's hydrate, then the
        call it lets through): queued together, so they go in one pipeline, one after the other
        (a pipeline split by node keeps each node's order). Each answer, or the exception it
        raised, in order."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        for script, keys, args in calls:
            futures.append(loop.create_future())
            self._ticks.pending.append((script, keys, args, futures[-1]))
        self._ticks.added()
        answers: list[Any] = []
        for future in futures:  # all answered by the same pipeline: no gather needed
            try:
                answers.append(await future)
            except Exception as exc:
                answers.append(exc)
        return answers

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
            if isinstance(exc, CLIENT_FAILURES) and not isinstance(exc, RedisError):
                # redis-py itself tripped over a connection closed under it (a cluster node
                # failing over): the call may have reached Redis, like any lost connection
                exc = ClientFailed(f"the Redis client failed mid-call: {type(exc).__name__}")
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
        if self.durable is not None:
            return await self._durable_pipeline(self.durable, batch)
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args, _ in batch:
                # as a plain command: redis-py refuses pipe.evalsha() on a cluster, but routes
                # EVALSHA by its keys (all of one slot) like any other command
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    async def _durable_pipeline(self, durable: ReplicaAcks, batch: list[Call]) -> list[Any]:
        """The calls grouped by the node holding their slot, each group sent to its node with a
        beacon and WAIT (one WAIT per node); a group the replicas did not confirm answers
        NotReplicated for each call (errors stay as they are: a missing script is sent again)."""
        groups: dict[str, tuple[Redis, list[int]]] = {}
        for i, (_, keys, _, _) in enumerate(batch):
            name, client = durable.node_of(keys[0])
            groups.setdefault(name, (client, []))[1].append(i)
        answers: list[Any] = [None] * len(batch)

        async def group(client: Redis, members: list[int]) -> None:
            calls = [batch[i] for i in members]
            commands = [("EVALSHA", s.sha, len(k), *k, *a) for s, k, a, _ in calls]
            try:
                out, confirmed = await durable.send(client, commands, calls[0][1][0])
            except RedisError as exc:
                out, confirmed = [exc] * len(members), True
            for i, answer in zip(members, out, strict=True):
                if not confirmed and not isinstance(answer, Exception):
                    answer = NotReplicated(
                        f"the replicas did not confirm the change within {durable.timeout_ms} ms"
                    )
                answers[i] = answer

        await asyncio.gather(*(group(client, members) for client, members in groups.values()))
        return answers
