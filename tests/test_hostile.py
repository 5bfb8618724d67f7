"""What an attacker or a buggy client sends (issue 12): names with '/' reach their routes,
nothing forges a log line, and every case ends with the books straight."""

from __future__ import annotations

import io
import logging
import re

import asyncpg
from redis.asyncio import Redis

from gateway.keys import Keys
from gateway.logs import TextFormatter, serve_log_config
from tests.conftest import Client


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
    assert config["()"] == "gateway.logs.TextFormatter"
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
