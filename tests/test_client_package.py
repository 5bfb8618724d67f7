"""The client SDK and its LiteLLM integration are their own distribution (clients/python): it
builds alone, depends on httpx and msgspec only (LiteLLM as an extra), imports nothing of the
server, and its copies of the gateway's answers match the server's."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import msgspec
import pytest

import metering_client.schemas as client
from gateway.credits import grant_schemas, price_schemas, schemas

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "python"
SERVER_ONLY = ("gateway", "persistence", "litestar", "asyncpg", "loadtests")


@pytest.mark.parametrize(
    ("server", "name"),
    [
        (schemas, "DebitResult"),
        (schemas, "Balance"),
        (schemas, "Expiring"),
        (schemas, "Reservation"),
        (schemas, "CommitResult"),
        (schemas, "ReleaseResult"),
        (price_schemas, "PriceInfo"),
        (price_schemas, "PriceList"),
        (grant_schemas, "Grant"),
        (grant_schemas, "GrantList"),
    ],
)
def test_the_sdk_reads_the_answers_the_server_writes(server: ModuleType, name: str) -> None:
    ours, theirs = getattr(client, name), getattr(server, name)
    assert [f.name for f in msgspec.structs.fields(ours)] == [
        f.name for f in msgspec.structs.fields(theirs)
    ]


def outside_the_repository(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Python code run from clients/python, not the repository root: the server's packages are
    not on the path there."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=CLIENT,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin", **env},
    )


def test_importing_the_sdk_and_the_integration_pulls_nothing_of_the_server() -> None:
    code = (
        "import sys, metering_client, metering_client.litellm\n"
        f"print([m for m in sys.modules if m.split('.')[0] in {SERVER_ONLY!r}])"
    )
    out = outside_the_repository(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_distribution_builds_alone_with_only_httpx_and_msgspec(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(CLIENT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("metering_client-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = next(n for n in names if n.endswith("METADATA"))
        requires = [
            line.split(":", 1)[1].strip()
            for line in z.read(meta).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    assert all(n.startswith(("metering_client/", "metering_client-")) for n in names)
    assert {r.split(">")[0].split(";")[0].strip() for r in requires} == {
        "httpx",
        "msgspec",
        "litellm",
        "aiohttp",
    }
    assert any("extra ==" in r and r.startswith("litellm") for r in requires)
    assert any("extra ==" in r and r.startswith("aiohttp") for r in requires)  # optional


def test_the_proxy_handler_names_what_its_environment_lacks() -> None:
    """The proxy resolves metering_client.litellm.proxy_handler when it starts: without
    METERING_URL or METERING_API_KEY it fails there, saying which (it used to be None, which
    LiteLLM refused as 'neither a CustomLogger instance nor a callable'); with both it is the
    handler. Importing the package needs neither."""
    code = (
        "import metering_client.litellm as m\n"
        "try:\n    m.proxy_handler\nexcept ValueError as exc:\n    print(exc)\n"
    )
    out = outside_the_repository(code)
    assert out.returncode == 0, out.stderr
    assert "needs METERING_URL and METERING_API_KEY" in out.stdout
    code = "import metering_client.litellm as m; print(type(m.proxy_handler).__name__)"
    out = outside_the_repository(code, METERING_URL="http://127.0.0.1:9", METERING_API_KEY="k")
    assert out.stdout.strip() == "MeteringProxyHandler", out.stderr
