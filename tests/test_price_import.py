"""`metering pricing import --litellm`: LiteLLM's bundled price map (no network) into
model_pricing, exactly, keeping the operator's own prices; audited; a second run adds nothing."""

from __future__ import annotations

import json
from decimal import Decimal

import asyncpg

from gateway.base.settings import Settings
from gateway.credits.pricing import PriceBook
from gateway.credits.schemas import CommitRequest
from gateway.ops.price_import import bundled_map
from tests.conftest import Client
from tests.test_reconcile import run_cli


async def test_litellm_prices_are_imported_exactly_and_yours_are_kept(
    client: Client, settings: Settings, pool: asyncpg.Pool
) -> None:
    own = await client.put(
        "/api/v1/pricing/gpt-4o-mini", json={"input_per_million": "9", "output_per_million": "9"}
    )
    assert own.status_code == 200
    done = run_cli(settings, "pricing", "import", "--litellm", "--provider", "openai")
    assert done.returncode == 0, done.stderr
    added = int(done.stdout.split()[1])
    assert added > 50 and "kept 1 models already priced" in done.stdout
    spec = json.loads(bundled_map().read_text(), parse_float=Decimal)["gpt-4o"]
    row = await pool.fetchrow("SELECT * FROM model_pricing WHERE model = 'gpt-4o'")
    assert row["input_per_million"] == spec["input_cost_per_token"] * 1_000_000
    assert row["output_per_million"] == spec["output_cost_per_token"] * 1_000_000
    assert row["cached_input_per_million"] == spec["cache_read_input_token_cost"] * 1_000_000
    mine = await pool.fetchrow("SELECT * FROM model_pricing WHERE model = 'gpt-4o-mini'")
    assert mine["input_per_million"] == 9  # the operator's price, not LiteLLM's
    audited = await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'pricing.import'")
    assert audited == added
    again = run_cli(settings, "pricing", "import", "--litellm", "--provider", "openai")
    assert again.returncode == 0 and again.stdout.startswith("added 0 prices")
    call = CommitRequest(model="gpt-4o", input_tokens=1_000_000, cached_input_tokens=1_000_000)
    cost = await PriceBook(pool, ttl=0).price(call)  # priced by the imported rates
    rates = spec["input_cost_per_token"] + spec["cache_read_input_token_cost"]
    assert Decimal(cost) == rates * 1_000_000 * 1_000_000


def test_bad_arguments_are_one_line_and_a_non_zero_exit(settings: Settings) -> None:
    bad = run_cli(settings, "pricing", "import", "--litellm", "--credits-per-usd", "-1")
    assert bad.returncode == 2 and "--credits-per-usd must be a number > 0" in bad.stderr
    missing = run_cli(settings, "pricing", "import", "--litellm", "--file", "/nonexistent.json")
    assert missing.returncode == 1 and missing.stderr.strip() == "no price map at /nonexistent.json"
