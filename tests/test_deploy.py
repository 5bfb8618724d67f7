"""deploy/: the Prometheus config and alert rules pass promtool (Debian's `prometheus` package;
`.ci/services --tests` installs it), the rules' unit tests pass, and every metric the rules and
the Grafana dashboard name is one a running gateway serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Client

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
METRIC = re.compile(r"\bmetering_[a-z0-9_]+")


def promtool(*args: str, cwd: Path) -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (.ci/services --tests does)"
    out = subprocess.run(
        [found, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_the_alert_rules_and_the_scrape_config_pass_promtool(tmp_path: Path) -> None:
    for name in ("prometheus.yml", "alerts.yml", "alerts.test.yml"):
        shutil.copy(DEPLOY / "prometheus" / name, tmp_path / name)
    (tmp_path / "metering-read.key").write_text("a-read-key\n")  # what the operator provides
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert "10 rules found" in promtool("check", "rules", "alerts.yml", cwd=tmp_path)
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)


def _queried() -> dict[str, set[str]]:
    """The metric names each file uses (the rules' expressions and annotations, the panels')."""
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text().splitlines()
    dashboard = json.loads((DEPLOY / "grafana" / "metering.json").read_text())
    targets = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return {
        "alerts.yml": set(
            METRIC.findall("\n".join(r for r in rules if not r.lstrip().startswith("#")))
        ),
        "metering.json": set(METRIC.findall("\n".join(targets))),
    }


async def test_the_rules_and_the_dashboard_name_only_metrics_that_exist(client: Client) -> None:
    for body in (
        {"user_id": "d", "amount": "1", "request_id": "d1"},
        {"user_id": "d", "amount": "99", "request_id": "d2"},  # 402
    ):
        await client.post("/api/v1/credits/debit", json=body)
    await client.post(
        "/api/v1/credits/reservations", json={"user_id": "d", "amount": "1", "request_id": "d3"}
    )
    served = set()
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            served.add(name)
            if kind == "histogram":
                served |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    for where, names in _queried().items():
        assert len(names) >= 8, (where, names)
        assert names <= served, f"{where} names metrics no gateway serves: {names - served}"


@pytest.mark.parametrize(
    "panel",
    json.loads((DEPLOY / "grafana" / "metering.json").read_text())["panels"],
    ids=lambda p: p["title"],
)
def test_each_dashboard_panel_queries_something(panel: dict[str, object]) -> None:
    targets = panel["targets"]
    assert isinstance(targets, list) and targets
    assert all(METRIC.search(t["expr"]) for t in targets)
