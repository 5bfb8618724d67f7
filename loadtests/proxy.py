"""The real LiteLLM proxy server as a process, in front of the fake provider
(loadtests/fake_provider.py), with or without the metering integration: for the proxy tests
and the latency script. The proxy runs from its own environment (`make proxy-venv`), as an LLM
team installs it: `pip install 'litellm[proxy]' metering-client`."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from loadtests.servers import ServerProcess

MASTER_KEY = "sk-proxy-test-master-key"


def proxy_bin() -> str:
    """The proxy's `litellm` command: METERING_PROXY_BIN (the Makefile sets it to
    .venv-proxy/bin/litellm), else .venv-proxy beside this repository."""
    found = os.environ.get("METERING_PROXY_BIN") or str(
        Path(__file__).resolve().parent.parent / ".venv-proxy" / "bin" / "litellm"
    )
    if not Path(found).exists():
        raise RuntimeError(f"no LiteLLM proxy at {found}: run `make proxy-venv` first")
    return found


class FakeProvider(ServerProcess):
    def __init__(self) -> None:
        super().__init__([sys.executable, "-m", "loadtests.fake_provider"], {}, health="/health")

    def calls(self, says: str) -> int:
        """How many completion requests whose last message was this text reached it."""
        query = urllib.parse.urlencode({"says": says})
        with urllib.request.urlopen(f"{self.url}/calls?{query}") as answer:
            found: int = json.load(answer)["calls"]
        return found


METERING_CALLBACK = "metering_client.litellm.proxy_handler"
NOOP_CALLBACK = "loadtests.noop_callback.handler"  # needs the repository on PYTHONPATH


def config(
    provider: str, models: dict[str, str], metered: bool | str, **router: Any
) -> dict[str, Any]:
    """A proxy config.yaml (JSON is YAML): each model group served by the fake provider's
    upstream model of the given name; metered: the metering callback as the README configures
    it (True), no callback (False), or the callback named."""
    callback = METERING_CALLBACK if metered is True else metered
    cfg: dict[str, Any] = {
        "model_list": [
            {
                "model_name": group,
                "litellm_params": {
                    "model": f"openai/{upstream}",
                    "api_base": f"{provider}/v1",
                    "api_key": "fake",
                },
            }
            for group, upstream in models.items()
        ],
        "router_settings": router,
        "general_settings": {"master_key": MASTER_KEY},
        "litellm_settings": {"callbacks": callback} if callback else {},
    }
    return cfg


class LiteLLMProxy(ServerProcess):
    """`litellm --config ...` on a spare port; env carries METERING_URL, METERING_API_KEY and
    the handler's other settings."""

    def __init__(self, cfg: dict[str, Any], env: dict[str, str]) -> None:
        path = Path(tempfile.mkstemp(prefix="litellm-", suffix=".yaml")[1])
        path.write_text(json.dumps(cfg))
        super().__init__(
            [proxy_bin(), "--config", str(path), "--host", "127.0.0.1"],
            {"LITELLM_LOCAL_MODEL_COST_MAP": "True", **env},
            health="/health/liveliness",
            start_seconds=120,
        )
