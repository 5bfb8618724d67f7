"""Hostile input: schemathesis fuzzes every operation of the gateway's own OpenAPI schema against
a real gateway process. No 5xx; every answer's status code, content type and body match the
schema. The count of generated inputs goes to build/fuzz.json."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from redis.asyncio import Redis

from loadtests.servers import GatewayProcess
from persistence import db
from tests.conftest import ADMIN_KEY, PG_SERVER, REDIS_URL
from tests.faults.harness import migrate_database

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
    database = f"{PG_SERVER}/metering_fuzz_{uuid.uuid4().hex[:8]}"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    migrate_database(database)
    gw = GatewayProcess(
        {
            "METERING_DATABASE_URL": database,
            "METERING_REDIS_URL": REDIS_URL,
            "METERING_ADMIN_KEY": ADMIN_KEY,
            "METERING_KEY_PREFIX": prefix,
            "METERING_RENEW_CRON": "off",
        }
    )
    gw.start()
    try:
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
        generated = re.search(r"(\d+) generated", out)
        REPORT.parent.mkdir(exist_ok=True)
        REPORT.write_text(
            json.dumps(
                {
                    "operations": int(m.group(1))
                    if (m := re.search(r"Tested: (\d+)", out))
                    else None,
                    "generated": int(generated.group(1)) if generated else None,
                    "exit_code": proc.returncode,
                }
            )
        )
        assert proc.returncode == 0, out[-6000:]
        assert ADMIN_KEY not in gw.log.read_text()
    finally:
        gw.stop()

        async def cleanup() -> None:
            r = Redis.from_url(REDIS_URL)
            async for key in r.scan_iter(match=f"{prefix}:*", count=1000):
                await r.delete(key)
            await r.aclose()
            await db.drop_database(database)

        asyncio.run(cleanup())
