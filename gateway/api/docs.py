"""The OpenAPI document and its pages: bearer authentication declared (Swagger UI's Authorize
button; every operation but the health checks needs a key), and Swagger UI and ReDoc served
from files the gateway ships (gateway/api/docs_assets), so the pages work without internet
access."""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router

ASSETS = Path(__file__).resolve().parent / "docs_assets"
ASSETS_PATH = "/schema/assets"
BEARER = "bearer"  # the security scheme's name in the document

_FAVICON = f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon.png'>"


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Metering gateway",
        version="0.1.0",
        components=Components(
            security_schemes={
                BEARER: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="An API key: `Authorization: Bearer <key>` (the admin key, or "
                    "one made with POST /api/v1/admin/keys); each operation needs its scope",
                )
            }
        ),
        security=[{BEARER: []}],
        render_plugins=[
            SwaggerRenderPlugin(
                js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                css_url=f"{ASSETS_PATH}/swagger-ui.css",
                standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
                favicon=_FAVICON,
            ),
            RedocRenderPlugin(
                js_url=f"{ASSETS_PATH}/redoc.standalone.js", google_fonts=False, favicon=_FAVICON
            ),
        ],
    )


def assets_router() -> Router:
    """The pages' scripts and styles: public (they hold nothing of the gateway's)."""
    return create_static_files_router(
        path=ASSETS_PATH, directories=[ASSETS], opt={"public": True}, name="docs_assets"
    )
