"""How `metering serve` bounds its HTTP connections (uvicorn's httptools protocol, plus one
timer): a client has METERING_HEADER_TIMEOUT seconds from a request's first byte (or from
connecting) to the end of its headers, or the connection is closed. Without it a client
sending a byte a second holds a connection and its buffers as long as it likes (300 such
connections were held 45 s and more). uvicorn's own limits do the rest: the keep-alive timeout
between requests, limit_concurrency (503 past METERING_LIMIT_CONCURRENCY connections and
requests per worker). Bodies: the gateway reads at most METERING_MAX_BODY_BYTES; a front proxy
bounds how slowly (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT = float(os.environ.get("METERING_HEADER_TIMEOUT", "10"))


class BoundedHttpTools(HttpToolsProtocol):
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
