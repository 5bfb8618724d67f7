"""What an attacker or a buggy client sends (issue 12): names with '/' reach their routes,
nothing forges a log line, and every case ends with the books straight."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import subprocess
import sys
import time

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from gateway.api.auth import Authenticator, generate_key, hash_key
from gateway.base.logs import TextFormatter, serve_log_config
from gateway.base.settings import Settings
from gateway.credits.keys import Keys
from persistence import api_keys
from tests.books import assert_books_balance
from tests.conftest import Client, FakeClock, gateway
from tests.processes import gateway_process

DEBIT = "/api/v1/credits/debit"


async def test_a_key_named_with_a_slash_can_be_revoked(client: Client) -> None:
    made = await client.post("/api/v1/admin/keys", json={"name": "ci/deploy", "scopes": ["read"]})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    reader = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/api/v1/tiers", headers=reader)).status_code == 200
    assert (await client.delete("/api/v1/admin/keys/ci%2Fdeploy")).status_code == 204
    assert (await client.get("/api/v1/tiers", headers=reader)).status_code == 401
    assert (await client.delete("/api/v1/admin/keys/ci%2Fdeploy")).status_code == 404


async def test_user_ids_with_a_slash_or_a_percent_reach_their_routes(
    client: Client, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    for user, path in (("team/alice", "team%2Falice"), ("100%", "100%25"), ("a%2Fb", "a%252Fb")):
        r = await client.post(
            "/api/v1/credits/debit", json={"user_id": user, "amount": "1", "request_id": "r1"}
        )
        assert r.status_code == 200, r.text
        await client.app.state.services.flusher.flush()
        page = await client.get(f"/api/v1/credits/{path}/transactions")
        assert page.status_code == 200, (user, page.text)
        assert page.json()["user_id"] == user
        assert page.json()["transactions"][0]["type"] == "usage"
        usage = await client.get(f"/api/v1/credits/{path}/usage")
        assert usage.status_code == 200 and usage.json()["total_requests"] == 1, usage.text
        tier = await client.put(f"/api/v1/credits/{path}/tier", json={"tier": "starter"})
        assert tier.status_code == 200 and tier.json()["user_id"] == user, tier.text
    # the user 'team' has nothing: the slash was not a path separator
    assert (await client.get("/api/v1/credits/team/transactions")).status_code == 404


async def test_a_model_with_a_slash_can_be_priced(client: Client) -> None:
    r = await client.put(
        "/api/v1/pricing/openai%2Fgpt-4o",
        json={"input_per_million": "2.5", "output_per_million": "10"},
    )
    assert r.status_code == 200 and r.json()["model"] == "openai/gpt-4o", r.text
    r = await client.post(
        "/api/v1/credits/debit",
        json={
            "user_id": "p",
            "request_id": "r",
            "model": "openai/gpt-4o",
            "input_tokens": 1000,
            "output_tokens": 100,
        },
    )
    assert r.status_code == 200 and r.json()["charged"] == "0.003500", r.text


FORGED = "/api/v1/credits/reservations/x\n2026-12-01 12:00:00,000 INFO metering.app key revoked"


def test_a_text_log_line_cannot_be_forged() -> None:
    """What a client sent (here a decoded path, as the 500 handler logs it) stays on its record's
    line in METERING_LOG_FORMAT=text, escaped; a traceback's lines are indented."""
    config = serve_log_config(fmt="text")["formatters"]["metering"]
    assert config["()"] == "gateway.base.logs.TextFormatter"
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter(config["fmt"]))
    log = logging.getLogger("metering.test-forged")
    log.addHandler(handler)
    try:
        raise ValueError("bad\nINFO metering.app forged")
    except ValueError as exc:
        log.error("unhandled error on %s %s", "POST", FORGED + "\u2028x\x1b[2J", exc_info=exc)
    finally:
        log.removeHandler(handler)
    lines = out.getvalue().splitlines()
    record = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR metering\.test-forged ")
    assert record.match(lines[0]) and "x\\n2026-12-01" in lines[0] and "\\u2028" in lines[0]
    assert "\x1b" not in lines[0] and len(lines) > 2
    assert all(line.startswith("    | ") for line in lines[1:]), lines


async def test_malformed_tokens_cost_no_lookup_and_unknown_ones_one_per_ttl(
    client: Client,
) -> None:
    auth: Authenticator = client.app.state.services.authenticator
    before = auth.lookups
    for i in range(3000):  # not the shape of a key this gateway issues
        token = f"bogus-{i}" if i % 2 else f"mk_{i}"
        assert await auth.authenticate(token) is None
    assert auth.lookups == before
    unknown = "mk_" + "A" * 43
    for _ in range(50):
        assert await auth.authenticate(unknown) is None
    assert auth.lookups == before + 1  # the negative cache answers the rest for the ttl


async def test_a_flood_of_unknown_tokens_does_not_push_out_known_keys(
    pool: asyncpg.Pool,
) -> None:
    key = generate_key()
    await api_keys.insert_key(pool, "kept", hash_key(key), ["debit"], "test")
    auth = Authenticator(pool, None, cache_ttl=60, cache_entries=100)
    assert await auth.authenticate(key) is not None
    for _ in range(300):
        assert await auth.authenticate(generate_key()) is None
    lookups = auth.lookups
    principal = await auth.authenticate(key)
    assert principal is not None and principal.name == "kept"
    assert auth.lookups == lookups  # still cached: it would serve through a PostgreSQL outage
    assert len(auth._unknown.items) == 100  # bounded


async def test_an_address_that_keeps_failing_gets_429_but_known_keys_work(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    async with gateway(settings, clock, auth_fail_limit=5, auth_fail_window=30) as c:
        made = await c.post("/api/v1/admin/keys", json={"name": "p", "scopes": ["debit"]})
        good = {"Authorization": f"Bearer {made.json()['key']}"}
        body = {"user_id": "u", "amount": "1", "request_id": "r1"}
        assert (await c.post(DEBIT, json=body, headers=good)).status_code == 200
        bad = {"Authorization": "Bearer " + generate_key()}
        answers = [(await c.post(DEBIT, json=body, headers=bad)).status_code for _ in range(7)]
        assert answers == [401] * 5 + [429] * 2
        blocked = await c.post(DEBIT, json=body, headers=bad)
        assert blocked.headers["retry-after"] == "30" and "too many failed" in blocked.text
        other = await c.get("/api/v1/tiers", headers=bad)  # the Litestar routes too
        assert other.status_code == 429 and other.headers["retry-after"] == "30"
        again = {**body, "request_id": "r2"}
        assert (await c.post(DEBIT, json=again, headers=good)).status_code == 200
        await c.app.state.services.flusher.flush()
    await assert_books_balance(pool, redis, keys)


@pytest.mark.parametrize("key", ["dev-admin-key", "short-but-not-default"])
def test_serve_refuses_a_weak_admin_key_on_a_network_address(key: str) -> None:
    env = {**os.environ, "METERING_ADMIN_KEY": key}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.ops.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "refusing to serve it on 0.0.0.0" in proc.stderr, proc.stderr
    assert key not in proc.stderr  # the key itself is never printed


@pytest.mark.parametrize("path", ["/schema", "/schema/openapi.json", "/schema/swagger"])
async def test_the_openapi_schema_needs_a_key_unless_opened(
    settings: Settings, clock: FakeClock, pool: asyncpg.Pool, path: str
) -> None:
    async with gateway(settings, clock) as c:
        assert (await c.get(path, headers={"Authorization": ""})).status_code == 401
        made = await c.post("/api/v1/admin/keys", json={"name": "docs", "scopes": ["read"]})
        reader = {"Authorization": f"Bearer {made.json()['key']}"}
        assert (await c.get(path, headers=reader)).status_code == 200
        assert (await c.get("/health/live", headers={"Authorization": ""})).status_code == 200
    async with gateway(settings, clock, public_schema=True) as c:
        assert (await c.get(path, headers={"Authorization": ""})).status_code == 200


def test_slow_headers_are_cut_off_and_the_server_keeps_serving() -> None:
    """300 connections sending a byte a second were held 45 s; now each is closed once its
    headers take longer than METERING_HEADER_TIMEOUT (1 s here)."""
    with gateway_process(METERING_HEADER_TIMEOUT="1") as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        slow = [socket.create_connection((host, int(port))) for _ in range(50)]
        request = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        closed: set[int] = set()
        started = time.monotonic()
        for byte in range(len(request)):
            for n, s in enumerate(slow):
                if n in closed:
                    continue
                try:
                    s.sendall(request[byte : byte + 1])
                except OSError:
                    closed.add(n)
            r = httpx.get(f"{gw.url}/health/live", timeout=5)  # others are served meanwhile
            assert r.status_code == 200
            if len(closed) == len(slow) or time.monotonic() - started > 10:
                break
            time.sleep(0.2)
        for n, s in enumerate(slow):  # a closed one reads EOF (or a reset)
            if n not in closed:
                s.settimeout(0.5)
                try:
                    if s.recv(1) == b"":
                        closed.add(n)
                except (TimeoutError, OSError):
                    pass
            s.close()
        elapsed = time.monotonic() - started
        assert len(closed) == len(slow), (len(closed), elapsed)
