"""requirements/*.lock pin every dependency the projects name, and this environment (made by
`make install`) has exactly the versions requirements/dev.lock pins: what CI tests is what the
lock says."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;]+)(?:\s*;\s*(.+))?$", re.M)


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def pins(lock: str) -> dict[str, str]:
    """name -> version of every pin whose environment marker (if any) holds here."""
    text = (ROOT / "requirements" / lock).read_text()
    return {
        m[1].lower().replace("_", "-"): m[2]
        for m in PIN.finditer(text)
        if not m[3] or Marker(m[3]).evaluate()
    }


def test_every_named_dependency_is_pinned() -> None:
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]
    named = [*server["dependencies"], *server["optional-dependencies"]["dev"]]
    named += [*client["dependencies"], *client["optional-dependencies"]["aiohttp"]]
    dev = pins("dev.lock")
    assert {_name(r) for r in named} - set(dev) == set()
    proxy = pins("proxy.lock")
    wanted = (ROOT / "clients/python/proxy-requirements.txt").read_text()
    [(name, version, _)] = PIN.findall(wanted)
    assert proxy[name] == version  # the proxy the tests run is the one proxy-requirements names
    assert {_name(r) for r in client["dependencies"]} <= set(proxy)


def test_this_environment_is_the_lock() -> None:
    drift = {
        name: (version, installed)
        for name, version in pins("dev.lock").items()
        if (installed := metadata.version(name)) != version
    }
    assert drift == {}, drift
