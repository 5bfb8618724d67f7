"""The house rule, checked on every import (top-level and inside functions) of the server's code.

gateway/ is one package per layer, each importing only its own layer and those below it:

    ops      the `metering` CLI, top, reconcile, supervision: entry points that use everything
    api      HTTP: app factory, debit fast path, routes, auth, health
    flusher  the write-behind and the jobs beside it (renewals, webhooks)
    credits  the credit service and its features, and what they speak (schemas, money, keys, ids,
             the clock, the Lua scripts, the coalescer)
    base     settings, metrics, logs, connections, errors

persistence/ (PostgreSQL) sits beside base: any layer may use it, it uses none of them. The client
SDK (clients/python, metering_client) is not part of the server: nothing in gateway/ or
persistence/ imports it, and it imports nothing of theirs.
No module is longer than MAX_LINES."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["base", "credits", "flusher", "api", "ops"]  # bottom first
MAX_LINES = 450


def imports(path: Path) -> set[str]:
    """Every module a file imports, as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "gateway" and parts[1] in LAYERS else None


def test_every_module_lives_in_a_layer() -> None:
    loose = [p.name for p in (ROOT / "gateway").glob("*.py") if p.name != "__init__.py"]
    assert loose == [], "gateway/ holds packages only; put these in a layer"
    assert {
        p.name for p in (ROOT / "gateway").iterdir() if p.is_dir() and p.name != "__pycache__"
    } == set(LAYERS)


def test_each_layer_imports_only_itself_and_the_layers_below() -> None:
    wrong: list[str] = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        own = path.relative_to(ROOT / "gateway").parts[0]
        if own not in LAYERS:
            continue
        for module in imports(path):
            other = layer_of(module)
            if other is not None and LAYERS.index(other) > LAYERS.index(own):
                wrong.append(f"{path.relative_to(ROOT)} ({own}) imports {module} ({other})")
            if module.split(".")[0] == "metering_client":
                wrong.append(f"{path.relative_to(ROOT)} imports the client SDK ({module})")
    assert wrong == []


def test_persistence_uses_no_layer_and_no_client() -> None:
    for path in sorted((ROOT / "persistence").rglob("*.py")):
        outside = {m for m in imports(path) if m.split(".")[0] in ("gateway", "metering_client")}
        assert outside == set(), path


def test_the_client_distribution_imports_nothing_of_the_server() -> None:
    for path in sorted((ROOT / "clients").rglob("*.py")):
        outside = {m for m in imports(path) if m.split(".")[0] in ("gateway", "persistence")}
        assert outside == set(), path


def test_no_module_is_too_long() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for folder in ("gateway", "persistence", "clients", "loadtests")
        for p in (ROOT / folder).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
