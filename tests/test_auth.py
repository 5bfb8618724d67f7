"""API keys: bearer auth on every route but health, hashed storage, scopes, revocation."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from gateway.api.auth import hash_key
from gateway.flusher.flush import FlushLoop
from tests.conftest import ADMIN_KEY, Client

DEBIT = ("POST", "/api/v1/credits/debit", {"user_id": "m", "amount": "1", "request_id": "x"})
BALANCE = ("GET", "/api/v1/credits/balance?user_id=m", None)
TIERS = ("GET", "/api/v1/tiers", None)
GRANT = ("POST", "/api/v1/credits/grant", {"user_id": "m", "amount": "1", "request_id": "g"})
TIER = ("PUT", "/api/v1/credits/m/tier", {"tier": "starter"})
KEYS = ("POST", "/api/v1/admin/keys", {"name": "k2", "scopes": ["read"]})
LIST_KEYS = ("GET", "/api/v1/admin/keys", None)
ROUTES = {
    "debit": DEBIT,
    "balance": BALANCE,
    "tiers": TIERS,
    "grant": GRANT,
    "tier": TIER,
    "keys": KEYS,
    "list_keys": LIST_KEYS,
}
ALLOWED = {  # scope -> routes it may call
    "debit": {"debit"},
    "read": {"balance", "tiers"},
    "admin": set(ROUTES),
}


async def call(client: Client, route: str, key: str | None) -> int:
    method, url, body = ROUTES[route]
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {"Authorization": ""}
    r = await client.request(method, url, json=body, headers=headers)
    return r.status_code


async def make_key(client: Client, name: str, scopes: list[str]) -> str:
    r = await client.post("/api/v1/admin/keys", json={"name": name, "scopes": scopes})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == name and r.json()["scopes"] == scopes
    return str(r.json()["key"])


@pytest.mark.parametrize("scope", sorted(ALLOWED))
async def test_scope_matrix(client: Client, scope: str) -> None:
    key = await make_key(client, f"key-{scope}", [scope])
    for route in ROUTES:
        code = await call(client, route, key)
        if route in ALLOWED[scope]:
            assert code not in (401, 403), (scope, route, code)
        else:
            assert code == 403, (scope, route, code)


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("key", [None, "wrong-key", "Basic abc"])
async def test_missing_or_wrong_key_is_401(client: Client, route: str, key: str | None) -> None:
    assert await call(client, route, key) == 401


async def test_health_needs_no_key(client: Client) -> None:
    await FlushLoop(client.app.state.services.flusher, 1).beat()  # a flusher runs
    live = await client.get("/health/live", headers={"Authorization": ""})
    assert live.status_code == 200
    ready = await client.get("/health/ready", headers={"Authorization": ""})
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"redis": "ok", "postgres": "ok", "migrations": "ok"}


async def test_keys_are_stored_hashed_and_never_logged(
    client: Client, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = await make_key(client, "svc", ["debit", "read"])
    assert key.startswith("mk_") and len(key) > 40
    stored = await pool.fetchrow("SELECT * FROM api_keys WHERE name = 'svc'")
    assert stored["key_hash"] == hash_key(key)
    assert key not in str(dict(stored))
    assert await call(client, "debit", key) == 200
    assert await call(client, "debit", key + "x") == 401
    assert key not in caplog.text and ADMIN_KEY not in caplog.text


async def test_duplicate_key_name_is_409(client: Client) -> None:
    await make_key(client, "dup", ["read"])
    r = await client.post("/api/v1/admin/keys", json={"name": "dup", "scopes": ["admin"]})
    assert r.status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["root"]},
        {"name": "", "scopes": ["read"]},
        {"scopes": ["read"]},
    ],
)
async def test_bad_key_requests_are_400(client: Client, body: dict[str, object]) -> None:
    assert (await client.post("/api/v1/admin/keys", json=body)).status_code == 400


async def test_revoked_key_stops_working_within_the_cache_ttl(client: Client) -> None:
    key = await make_key(client, "temp", ["read"])
    assert await call(client, "balance", key) == 200
    listed = (await client.get("/api/v1/admin/keys")).json()
    assert [k["name"] for k in listed] == ["temp"] and "key" not in listed[0]
    assert (await client.delete("/api/v1/admin/keys/temp")).status_code == 204
    assert await call(client, "balance", key) == 401  # same process: at once
    assert (await client.delete("/api/v1/admin/keys/temp")).status_code == 404


async def test_revocation_reaches_other_processes_after_the_cache_ttl(
    client: Client, pool: asyncpg.Pool
) -> None:
    key = await make_key(client, "elsewhere", ["read"])
    assert await call(client, "balance", key) == 200  # cached now
    await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE name = 'elsewhere'")
    await asyncio.sleep(0.6)  # auth_cache_ttl is 0.5 s in the test settings
    assert await call(client, "balance", key) == 401


async def test_whoami_tells_any_key_its_name_and_scopes(client: Client) -> None:
    key = await make_key(client, "who-debits", ["debit"])
    r = await client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.json() == {"name": "who-debits", "scopes": ["debit"]}
    me = await client.get("/api/v1/whoami")  # the bootstrap admin key
    assert me.json() == {"name": "bootstrap-admin", "scopes": ["admin"]}
    assert (await client.get("/api/v1/whoami", headers={"Authorization": ""})).status_code == 401
