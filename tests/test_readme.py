"""The README's examples run top to bottom as written, against a live gateway: the shell block
of "Using it" (every curl must get a 2xx: curl --fail-with-body stops the script at the first
that does not) and the Python client's example; then the books balance. Only the gateway's
address and admin key are put in for the README's local defaults."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import httpx

from tests.books import assert_books_balance
from tests.conftest import ADMIN_KEY
from tests.processes import flushed, gateway_process

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
DEFAULTS = "KEY=dev-admin-key; URL=http://127.0.0.1:8000"


def block(heading: str, language: str) -> str:
    """The first fenced block of this language after the heading."""
    after = README[README.index(f"\n{heading}\n") :]
    found = re.search(rf"^```{language}\n(.*?)^```$", after, re.M | re.S)
    assert found, (heading, language)
    return found.group(1)


def test_the_readme_examples_run_as_written() -> None:
    shell = block("## Using it", "sh")
    assert shell.startswith(DEFAULTS)
    python = block("## Python client", "python")
    with gateway_process(METERING_FLUSH_INTERVAL="0.2") as gw:
        script = shell.replace(DEFAULTS, f"KEY={ADMIN_KEY}; URL={gw.url}", 1)
        # curl that fails (exit 22, the answer printed) on any status >= 400
        strict = 'curl() { command curl --fail-with-body "$@"; echo; }\n' + script
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", strict],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-2000:]}"
        assert '"status":"ready"' in out.stdout or '"status":"degraded"' in out.stdout
        env = {**os.environ, "METERING_URL": gw.url, "METERING_API_KEY": ADMIN_KEY}
        ran = subprocess.run(
            [sys.executable, "-c", python], capture_output=True, text=True, timeout=60, env=env
        )
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.startswith("charged 0.012500 left ") and " cost " in ran.stdout
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        alice = httpx.get(f"{gw.url}/api/v1/credits/balance?user_id=alice", headers=headers)
        assert Decimal(alice.json()["credits_held"]) == 0  # every hold settled

        async def books() -> None:
            async with flushed(gw) as (pool, redis, keys):
                assert await assert_books_balance(pool, redis, keys) >= 2

        asyncio.run(books())


def test_every_setting_the_code_reads_is_in_the_readme() -> None:
    """Each METERING_* variable the gateway or the client reads is documented (with its limit or
    default) in the README's configuration tables."""
    root = Path(__file__).resolve().parent.parent
    sources = [*root.glob("gateway/**/*.py"), *root.glob("clients/python/metering_client/**/*.py")]
    read = {name for f in sources for name in re.findall(r"METERING_[A-Z_]+", f.read_text())}
    assert len(read) > 25
    assert {name for name in read if f"`{name}`" not in README} == set()
