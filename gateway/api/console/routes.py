"""The console's files at /console: public (they hold no data; every figure on the page comes
from the API, asked with the key its user typed in), with a Content-Security-Policy that lets
the page load and call nothing but the gateway itself."""

from __future__ import annotations

from pathlib import Path

from litestar import Response, Router
from litestar.static_files import create_static_files_router

STATIC = Path(__file__).resolve().parent / "static"
PATH = "/console"
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


async def _secured(response: Response[object]) -> Response[object]:
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


def console_router() -> Router:
    """/console and /console/ answer index.html; its scripts and styles are /console/*."""
    return create_static_files_router(
        path=PATH,
        directories=[STATIC],
        html_mode=True,
        opt={"public": True},
        name="console",
        after_request=_secured,
    )
