"""`metering pricing import --litellm`: model prices from LiteLLM's price map, the one LiteLLM
ships inside its package (no network), or the same JSON from a file. LiteLLM gives USD per
token; the gateway keeps credits per million tokens: rate x 1,000,000 x credits per USD, read
from the JSON's text exactly and rounded half-up to 6 places. Models the operator has priced
already keep their prices: only missing models are added (each audited as pricing.import)."""

from __future__ import annotations

import argparse
import getpass
import importlib.util
import json
import re
from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import asyncpg

from gateway.base.settings import Settings
from gateway.credits.inputs import TEXT_PATTERN
from gateway.credits.money import SCALE
from persistence.db import DB_ERRORS, Executor
from persistence.pricing import Price, import_prices

MAP_FILE = "model_prices_and_context_window_backup.json"
MODES = ("chat", "completion", "responses")  # token-priced calls; images, audio etc. are not
_RATES = (  # LiteLLM's fields for the gateway's rates, in Price's order
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",  # cached input
    "cache_creation_input_token_cost",  # cache write
    "output_cost_per_reasoning_token",
)
_MAX_RATE = Decimal("999999999999.999999")


def bundled_map() -> Path:
    """The price map inside the installed litellm package (found without importing it)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("litellm is not installed here: pass --file with its price map")
    return Path(next(iter(spec.submodule_search_locations))) / MAP_FILE


def read_map(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(), parse_float=Decimal, parse_int=Decimal)
    return data


def prices_from_map(
    data: dict[str, Any], credits_per_usd: Decimal, providers: Iterable[str] = ()
) -> list[Price]:
    """The map's token-priced models (of the given providers, or all) as gateway prices."""
    wanted = set(providers)
    pattern = re.compile(TEXT_PATTERN)
    out = []
    for model, spec in sorted(data.items()):
        if not isinstance(spec, dict) or spec.get("mode") not in MODES:
            continue
        if wanted and spec.get("litellm_provider") not in wanted:
            continue
        if not (0 < len(model) <= 255 and pattern.match(model)):
            continue
        inp, outp, cached, write, reasoning = (
            _rate(spec.get(theirs), credits_per_usd) for theirs in _RATES
        )
        if inp is not None and outp is not None:
            out.append(Price(model, inp, outp, cached, write, reasoning))
    return out


def _rate(per_token: Any, credits_per_usd: Decimal) -> Decimal | None:
    if not isinstance(per_token, Decimal) or not per_token.is_finite() or per_token < 0:
        return None
    rate = (per_token * 1_000_000 * credits_per_usd).quantize(SCALE, rounding=ROUND_HALF_UP)
    return rate if rate <= _MAX_RATE else None


async def import_litellm(
    conn: Executor,
    path: Path,
    credits_per_usd: Decimal,
    providers: Iterable[str],
    actor: str,
    dry_run: bool = False,
) -> tuple[int, int]:
    """(prices added, models in the map already priced, kept as they were)."""
    prices = prices_from_map(read_map(path), credits_per_usd, providers)
    if dry_run:
        return len(prices), 0
    added = await import_prices(conn, prices, actor, f"litellm:{path.name}")
    return added, len(prices) - added


async def command(settings: Settings, args: argparse.Namespace) -> tuple[int, str]:
    """`metering pricing import`: its exit status and what it prints."""
    try:
        rate = Decimal(args.credits_per_usd)
        if not rate.is_finite() or rate <= 0:
            raise InvalidOperation
    except InvalidOperation:
        return 2, f"--credits-per-usd must be a number > 0, not {args.credits_per_usd!r}"
    try:
        path = Path(args.file) if args.file else bundled_map()
        if not path.is_file():
            return 1, f"no price map at {path}"
        conn = await asyncpg.connect(settings.database_url)
    except FileNotFoundError as exc:
        return 1, str(exc)
    except (OSError, *DB_ERRORS) as exc:
        return 1, f"cannot reach PostgreSQL: {exc}"
    try:
        added, kept = await import_litellm(
            conn, path, rate, args.provider, f"cli:{getpass.getuser()}", args.dry_run
        )
    except (ValueError, UnicodeDecodeError) as exc:
        return 1, f"{path} is not a LiteLLM price map: {exc}"
    finally:
        await conn.close()
    if args.dry_run:
        return 0, f"{added} models priced in {path.name}; nothing changed (--dry-run)"
    return 0, f"added {added} prices from {path.name}; kept {kept} models already priced"
