"""Path parameters that hold a '/': user ids (``team/alice``), key names (``ci/deploy``) and
model names (``openai/gpt-4o``) are sent percent-encoded (``team%2Falice``), but the server
decodes the path before routing, so the route would see one segment too many (404).

The gateway routes on the raw path instead, decoded except for ``%2F`` and ``%25``, and each
path parameter is decoded once after routing: ``team%2Falice`` reaches the handler as
``team/alice``, ``100%25`` as ``100%``, and an unencoded ``%`` stays what it was."""

from __future__ import annotations

from urllib.parse import unquote

from litestar.types import ASGIApp, Receive, Scope, Send


def routing_path(scope: Scope) -> str:
    """The path to route on: the raw path decoded, '%2F' and '%25' kept as they were sent."""
    raw: bytes | None = scope.get("raw_path")
    if not raw or b"%" not in raw:
        return str(scope["path"])
    kept = raw.replace(b"%25", b"%2525").replace(b"%2F", b"%252F").replace(b"%2f", b"%252F")
    return unquote(kept.decode("latin-1"))


def decode_path_params(app: ASGIApp) -> ASGIApp:
    """Litestar middleware (it runs after routing): each path parameter decoded once."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        params = scope.get("path_params")
        if params:  # a new dict: the router caches the one it made
            scope["path_params"] = {
                name: unquote(value) if isinstance(value, str) and "%" in value else value
                for name, value in params.items()
            }
        await app(scope, receive, send)

    return middleware
