"""Who pays for a proxied call, how large its hold is, and how a call is refused."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

from metering_client.schemas import PriceInfo

DEFAULT_PAYER = "end_user,user"


@dataclass(frozen=True)
class HoldSizing:
    floor: Decimal = Decimal("0.01")
    ceiling: Decimal = Decimal("10")
    default_output: int = 4096  # output tokens assumed when the request sets no max_tokens


def estimate(price: PriceInfo, prompt: int, output: int, sizing: HoldSizing) -> Decimal:
    """A call's most likely top cost: prompt and output tokens at the model's price, rounded
    up to the micro-credit, within the sizing's floor and ceiling."""
    cost = (
        prompt * Decimal(price.input_per_million) + output * Decimal(price.output_per_million)
    ) / 1_000_000
    cost = cost.quantize(Decimal("0.000001"), rounding=ROUND_CEILING)
    return min(max(cost, sizing.floor), sizing.ceiling)


_SOURCES = ("end_user", "user", "key_user", "header", "key_metadata", "team_metadata")


class MeteringRefused(ValueError):
    """A proxied call refused before the model call, with the status its client gets."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code, self.detail = status_code, detail


def refuse(status: int, detail: str) -> Exception:
    """What a pre-call hook raises to refuse a call: inside the proxy, FastAPI's HTTPException
    (the proxy answers it with this status and detail, as LiteLLM's own budget checks do:
    400, which the OpenAI SDK does not retry); elsewhere MeteringRefused."""
    try:
        fastapi = importlib.import_module("fastapi")  # present inside the proxy only
    except ImportError:
        return MeteringRefused(status, detail)
    refused: Exception = fastapi.HTTPException(status_code=status, detail=detail)
    return refused


def check_payer_rule(rule: str) -> None:
    """A METERING_PAYER rule: sources joined by ','; ValueError naming a bad one."""
    for source in rule.split(","):
        kind, _, name = source.strip().partition(":")
        if kind not in _SOURCES or (kind in _SOURCES[3:]) != bool(name):
            raise ValueError(
                f"METERING_PAYER: {source.strip()!r} is not one of end_user, user, key_user, "
                "header:NAME, key_metadata:FIELD, team_metadata:FIELD"
            )


def payer_of(rule: str, key: Any, data: dict[str, Any]) -> str | None:
    """Who pays for a proxied call under rule (METERING_PAYER): the first source that names
    someone (a non-empty string), or None."""
    for source in rule.split(","):
        kind, _, name = source.strip().partition(":")
        found: Any = None
        if kind == "end_user":
            found = getattr(key, "end_user_id", None)
        elif kind == "user":
            found = data.get("user")
        elif kind == "key_user":
            found = getattr(key, "user_id", None)
        elif kind == "header":
            request = data.get("proxy_server_request") or {}
            headers = {k.lower(): v for k, v in (request.get("headers") or {}).items()}
            found = headers.get(name.lower())
        elif kind in ("key_metadata", "team_metadata"):
            found = (getattr(key, kind.replace("key_", ""), None) or {}).get(name)
        if isinstance(found, str) and found.strip():
            return found
    return None
