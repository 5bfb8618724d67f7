"""Hostile input: schemathesis fuzzes every operation of the gateway's own OpenAPI schema against
a real gateway process. No 5xx; every answer's status code, content type and body match the
schema. The count of generated inputs goes to build/fuzz.json."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ADMIN_KEY
from tests.processes import gateway_process

CHECKS = ",".join(
    [
        "not_a_server_error",
        "response_schema_conformance",
        "status_code_conformance",
        "content_type_conformance",
    ]
)
EXAMPLES = os.environ.get("METERING_FUZZ_EXAMPLES", "30")
REPORT = Path(__file__).resolve().parents[1] / "build" / "fuzz.json"


def test_fuzz_the_api_from_its_openapi_schema() -> None:
    with gateway_process() as gw:
        cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
        proc = subprocess.run(
            [
                cli,
                "run",
                f"{gw.url}/schema/openapi.json",
                "-H",
                f"Authorization: Bearer {ADMIN_KEY}",
                "--checks",
                CHECKS,
                "--max-examples",
                EXAMPLES,
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    out = proc.stdout + proc.stderr
    tested = re.search(r"Tested: (\d+)", out)
    generated = re.search(r"(\d+) generated", out)
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(
        json.dumps(
            {
                "operations": int(tested.group(1)) if tested else None,
                "generated": int(generated.group(1)) if generated else None,
                "exit_code": proc.returncode,
            }
        )
    )
    assert proc.returncode == 0, out[-6000:]
