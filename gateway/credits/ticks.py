"""Work gathered during one event-loop tick and handed over together (the coalescer's script
calls, the cold path's users): the first item of a tick schedules the hand-over for the end of
the tick, a full batch goes at once, and nothing waits for a batch to fill."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sized
from typing import Generic, TypeVar

B = TypeVar("B", bound=Sized)


class TickBatch(Generic[B]):
    def __init__(self, send: Callable[[B], Awaitable[None]], empty: Callable[[], B], limit: int):
        self.send = send
        self.empty = empty
        self.limit = limit
        self.pending: B = empty()
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    def added(self) -> None:
        """Call after adding to `pending`: sends it now when full, else at the tick's end."""
        if len(self.pending) >= self.limit:
            self.dispatch()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.dispatch)

    def dispatch(self) -> None:
        self._scheduled = False
        batch, self.pending = self.pending, self.empty()
        if len(batch):
            task = asyncio.ensure_future(self.send(batch))
            self._sending.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._sending.discard)
