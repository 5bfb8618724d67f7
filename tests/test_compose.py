"""docker-compose.yml and the Dockerfile, linted (no Docker engine runs on our machines)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_runs_what_the_gateway_needs() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "postgres", "gateway", "locust"}
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    gateway = services["gateway"]
    assert gateway["build"] == "."
    env = gateway["environment"]
    assert env["METERING_REDIS_URL"].startswith("redis://redis:")
    assert env["METERING_DATABASE_URL"].startswith("postgresql://")
    assert gateway["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    for name in ("redis", "postgres", "gateway"):
        assert "healthcheck" in services[name], name
    # no admin key ships: compose stops unless one is set (serve refuses a weak one anyway),
    # and nothing is published beyond this machine
    assert env["METERING_ADMIN_KEY"].startswith("${METERING_ADMIN_KEY:?")
    assert "dev-admin-key" not in (ROOT / "docker-compose.yml").read_text()
    for name in ("gateway", "locust"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    locust_file = services["locust"]["command"][1]
    assert locust_file == "/mnt/loadtests/locustfile.py"


def test_dockerfile_installs_the_package_and_serves() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    assert lines[0].startswith("FROM python:3.11")
    copied = {line.split()[1] for line in lines if line.startswith("COPY")}
    assert {"gateway", "persistence", "loadtests", "pyproject.toml"} <= copied
    assert any("metering" in line and "serve" in line for line in lines if line.startswith("CMD"))
