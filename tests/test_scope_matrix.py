"""Every route but health checks needs a key with its scope: walk all routes of the app."""

from __future__ import annotations

import re

import pytest

from tests.conftest import Client

SCOPES = ["debit", "read", "admin"]


# What answers without a key: health checks, and files that hold no data (the console's page
# and the API documentation's scripts: every figure they show comes from the API, with a key).
PUBLIC = ("/health/", "/console", "/schema/assets")


def routes(client: Client) -> list[tuple[str, str, str | None]]:
    found = []
    for route in client.app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods:
                if method in ("HEAD", "OPTIONS"):
                    continue
                path = re.sub(r"\{(\w+):\w+\}", r"x\1", route.path)
                scope = "public" if handler.opt.get("public") else handler.opt.get("scope")
                found.append((method, path, scope))
    return found


async def test_every_route_is_guarded(client: Client) -> None:
    keys = {}
    for scope in SCOPES:
        r = await client.post(
            "/api/v1/admin/keys", json={"name": f"only-{scope}", "scopes": [scope]}
        )
        keys[scope] = r.json()["key"]
    checked = 0
    for method, path, needed in routes(client):
        if path.startswith("/schema"):
            continue  # the OpenAPI document
        if needed == "public":
            assert path.startswith(PUBLIC), path
            continue
        assert needed is not None, (method, path)  # every other route says its scope
        anonymous = await client.request(method, path, headers={"Authorization": ""})
        assert anonymous.status_code == 401, (method, path)
        for scope, key in keys.items():
            r = await client.request(method, path, headers={"Authorization": f"Bearer {key}"})
            allowed = needed in (scope, "any") or scope == "admin"
            assert (r.status_code != 403) == allowed, (method, path, scope, r.status_code)
        checked += 1
    assert checked >= 24


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "bearer x", "Token abc", "Basic Zm9v"])
async def test_malformed_authorization_is_401(client: Client, header: str) -> None:
    r = await client.get("/api/v1/tiers", headers={"Authorization": header})
    assert r.status_code == 401
