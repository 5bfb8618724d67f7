"""The OpenAPI document declares bearer authentication (Swagger UI's Authorize button), and its
pages load only files the gateway serves itself, so they work on a machine without internet."""

from __future__ import annotations

import re

import httpx

from tests.conftest import Client

ASSET = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


async def test_every_operation_but_health_needs_the_bearer_key(client: Client) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert doc["security"] == [{"bearer": []}]
    overrides = {
        path: op["security"]
        for path, ops in doc["paths"].items()
        for op in ops.values()
        if "security" in op
    }
    assert overrides == {"/health/live": [{}], "/health/ready": [{}]}  # the two public ones
    assert len(doc["paths"]) > 20


async def test_swagger_and_redoc_load_only_the_gateways_own_files(client: Client) -> None:
    for page in ("/schema/swagger", "/schema/redoc"):
        html = (await client.get(page)).text
        assert "://" not in html, page  # no CDN, no fonts from elsewhere
        assets = ASSET.findall(html)
        assert assets and all(a.startswith("/schema/assets/") for a in assets), assets
        for asset in assets:  # public: a browser loads them without the key
            r = await client.get(asset, headers={"Authorization": ""})
            assert r.status_code == 200 and len(r.content) > 100, asset
            kind = r.headers["content-type"]
            assert asset.endswith(".png") or "javascript" in kind or "css" in kind, kind


async def test_the_pages_themselves_still_need_a_key(client: Client) -> None:
    bare = httpx.AsyncClient(transport=client._transport, base_url="http://gateway")
    async with bare:
        assert (await bare.get("/schema/swagger")).status_code == 401
        assert (await bare.get("/schema/openapi.json")).status_code == 401
        assert (await bare.get("/schema/assets/swagger-ui.css")).status_code == 200
