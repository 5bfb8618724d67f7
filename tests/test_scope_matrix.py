"""Every route but health checks needs a key with its scope: walk all routes of the app."""

from __future__ import annotations

import re

import pytest

from tests.conftest import Client

SCOPES = ["debit", "read", "admin"]


def routes(client: Client) -> list[tuple[str, str, str | None]]:
    found = []
    for route in client.app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods:
                if method in ("HEAD", "OPTIONS"):
                    continue
                path = re.sub(r"\{(\w+):\w+\}", r"x\1", route.path)
                found.append((method, path, handler.opt.get("scope")))
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
        if needed is None:
            assert path.startswith("/health"), path
            continue
        anonymous = await client.request(method, path, headers={"Authorization": ""})
        assert anonymous.status_code == 401, (method, path)
        for scope, key in keys.items():
            r = await client.request(method, path, headers={"Authorization": f"Bearer {key}"})
            allowed = scope == needed or scope == "admin"
            assert (r.status_code != 403) == allowed, (method, path, scope, r.status_code)
        checked += 1
    assert checked >= 24


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "bearer x", "Token abc", "Basic Zm9v"])
async def test_malformed_authorization_is_401(client: Client, header: str) -> None:
    r = await client.get("/api/v1/tiers", headers={"Authorization": header})
    assert r.status_code == 401
