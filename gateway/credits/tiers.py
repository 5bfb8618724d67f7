"""Tiers and their monthly allocations, read from a TOML file."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.credits.money import AmountError, parse_amount

DEFAULT_TIERS_FILE = "tiers.default.toml"


class TierConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    allocation: int  # micro-credits
    monthly_cap: int | None  # micro-credits, None when uncapped
    rollover: bool = False  # unused credits carry into the next period instead of expiring
    max_rollover: int | None = None  # micro: the most the rollover block holds (None: no limit)
    alerts: tuple[int, ...] = (80, 95)  # low-balance webhooks at these % of the allocation spent
    alert_depleted: bool = True  # and one when the period's spending has used up the balance
    price_multiplier: Decimal = Decimal(1)  # the gateway's model prices times this (markup)


def roll_flag(tier: Tier | None) -> str:
    """The user hash's 'roll' (lib.lua renew): '0' no rollover, '1' unbounded, '1:MICRO'."""
    if tier is None or not tier.rollover:
        return "0"
    return "1" if tier.max_rollover is None else f"1:{tier.max_rollover}"


@dataclass(frozen=True, slots=True)
class TierTable:
    tiers: dict[str, Tier]
    default: str

    def get(self, name: str) -> Tier | None:
        return self.tiers.get(name)

    @property
    def default_tier(self) -> Tier:
        return self.tiers[self.default]

    @property
    def markups(self) -> dict[str, Decimal]:
        """The tiers whose users pay other than the model prices: name -> multiplier."""
        return {t.name: t.price_multiplier for t in self.tiers.values() if t.price_multiplier != 1}

    def alert_rules(self) -> tuple[list[str], list[str], list[Decimal]]:
        """(tier, kind, fraction of the allocation) per low-balance alert, as three columns."""
        rules = [
            (t.name, f"used_{pct}", Decimal(pct) / 100)
            for t in self.tiers.values()
            for pct in t.alerts
        ] + [(t.name, "depleted", Decimal(1)) for t in self.tiers.values() if t.alert_depleted]
        return [r[0] for r in rules], [r[1] for r in rules], [r[2] for r in rules]


def _micro(value: Any, where: str, *, allow_zero: bool) -> int:
    if isinstance(value, float):
        raise TierConfigError(f"{where} must be a decimal string, not a float")
    if allow_zero and Decimal(str(value)) == 0:
        return 0
    try:
        return parse_amount(str(value), field=where)
    except AmountError as exc:
        raise TierConfigError(str(exc)) from None


def _multiplier(value: Any, where: str) -> Decimal:
    """A price multiplier: a decimal string (or integer) > 0 and <= 1000, at most 6 places."""
    if isinstance(value, float | bool):
        raise TierConfigError(f'{where} must be a decimal string such as "1.25", not {value!r}')
    try:
        m = Decimal(str(value))
    except ArithmeticError:
        raise TierConfigError(f"{where} must be a decimal number, not {value!r}") from None
    if not m.is_finite() or not 0 < m <= 1000 or m != m.quantize(Decimal("0.000001")):
        raise TierConfigError(f"{where} must be > 0 and <= 1000 with at most 6 decimal places")
    return m


def parse_tiers(text: str) -> TierTable:
    data = tomllib.loads(text)
    raw = data.get("tiers")
    if not isinstance(raw, dict) or not raw:
        raise TierConfigError("the tiers file needs a [tiers.NAME] table per tier")
    tiers: dict[str, Tier] = {}
    for name, spec in raw.items():
        if not (1 <= len(name) <= 50) or not name.isprintable():
            raise TierConfigError(
                f"tier name {name!r} must be 1 to 50 characters, none of them control characters"
            )
        alloc = _micro(spec.get("allocation", "0"), f"tiers.{name}.allocation", allow_zero=True)
        cap_raw = spec.get("monthly_cap")
        cap = (
            None
            if cap_raw is None
            else _micro(cap_raw, f"tiers.{name}.monthly_cap", allow_zero=True)
        )
        rollover = spec.get("rollover", False)
        if not isinstance(rollover, bool):
            raise TierConfigError(f"tiers.{name}.rollover must be true or false")
        max_raw = spec.get("max_rollover")
        if max_raw is not None and not rollover:
            raise TierConfigError(f"tiers.{name}.max_rollover needs rollover = true")
        max_roll = (
            None
            if max_raw is None
            else _micro(max_raw, f"tiers.{name}.max_rollover", allow_zero=True)
        )
        alerts = spec.get("alerts", [80, 95])
        if not isinstance(alerts, list) or not all(
            isinstance(a, int) and not isinstance(a, bool) and 1 <= a <= 100 for a in alerts
        ):
            raise TierConfigError(
                f"tiers.{name}.alerts must be a list of whole percentages from 1 to 100"
            )
        markup = _multiplier(spec.get("price_multiplier", "1"), f"tiers.{name}.price_multiplier")
        depleted = spec.get("alert_depleted", True)
        if not isinstance(depleted, bool):
            raise TierConfigError(f"tiers.{name}.alert_depleted must be true or false")
        tiers[name] = Tier(
            name=name,
            allocation=alloc,
            monthly_cap=cap,
            rollover=rollover,
            max_rollover=max_roll,
            alerts=tuple(sorted(set(alerts))),
            alert_depleted=depleted,
            price_multiplier=markup,
        )
    default = data.get("default_tier", "trial")
    if default not in tiers:
        raise TierConfigError(f"default_tier {default!r} is not one of the tiers")
    return TierTable(tiers=tiers, default=default)


def load_tiers(path: str | None) -> TierTable:
    if path:
        return parse_tiers(Path(path).read_text())
    return parse_tiers(resources.files("gateway.credits").joinpath(DEFAULT_TIERS_FILE).read_text())
