"""The `metering` command when what it needs is missing or refuses: a missing or wrong key, a
key without the scope, an unreachable gateway, Redis or PostgreSQL. Each answer is one line on
stderr naming what failed (never a password), and a non-zero exit; never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.processes import Running, gateway_process

DEAD = "127.0.0.1:9"  # the discard port: nothing listens there


def metering(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.ops.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "METERING_ADMIN_KEY": "", "METERING_API_KEY": "", **env},
    )


def one_line(out: subprocess.CompletedProcess[str], *words: str) -> str:
    """The failure's single stderr line, after checking it is one, with these words in it."""
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def gw() -> Iterator[Running]:
    with gateway_process() as running:
        yield running


def test_top_without_a_key_says_which_settings_give_one(gw: Running) -> None:
    out = metering("top", "--url", gw.url, "--once")
    one_line(out, "metering top", "--key", "METERING_ADMIN_KEY")
    assert out.returncode == 2


def test_top_with_a_wrong_key_or_a_read_key_says_so(gw: Running) -> None:
    one_line(metering("top", "--url", gw.url, "--key", "wrong-key", "--once"), "401", "refused")
    made = httpx.post(
        f"{gw.url}/api/v1/admin/keys",
        json={"name": "cli-read", "scopes": ["read"]},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert made.status_code == 201, made.text
    read = made.json()["key"]
    one_line(metering("top", "--url", gw.url, "--key", read, "--once"), "403", "admin key")


def test_top_against_no_gateway_names_the_address() -> None:
    one_line(
        metering("top", "--url", f"http://{DEAD}", "--key", ADMIN_KEY, "--once"),
        "cannot reach the gateway at http://127.0.0.1:9",
    )


@pytest.mark.parametrize(
    "command",
    [["keys", "list"], ["reconcile", "--no-flush"], ["migrate"], ["inspect", "someone"]],
)
def test_commands_against_no_postgres_say_so_without_the_password(command: list[str]) -> None:
    out = metering(*command, METERING_DATABASE_URL=f"postgresql://app:s3cret@{DEAD}/metering")
    line = one_line(out, "PostgreSQL", "127.0.0.1:9")
    assert "s3cret" not in out.stderr + out.stdout and "app:" not in line


@pytest.mark.parametrize("command", [["flush"], ["reconcile", "--no-flush"]])
def test_commands_against_no_redis_say_so_without_the_password(
    command: list[str], database_url: str
) -> None:
    # a migrated database, so that Redis is the one thing missing (on a fresh machine the
    # default database does not exist yet, and that would be named first)
    out = metering(
        *command,
        METERING_REDIS_URL=f"redis://:s3cret@{DEAD}/0",
        METERING_DATABASE_URL=database_url,
    )
    one_line(out, "Redis", "127.0.0.1:9")
    assert "s3cret" not in out.stderr + out.stdout


def test_addresses_are_named_without_credentials() -> None:
    from gateway.ops.errors import where

    assert where("redis+sentinel://:pw@a:1,b:2/svc/0") == "redis+sentinel://a:1,b:2/svc/0"
    assert where("postgresql://u:p@h:5432/db?password=x") == "postgresql://h:5432/db"
    assert where("http://127.0.0.1:9") == "http://127.0.0.1:9"
