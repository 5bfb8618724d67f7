"""The Lua scripts, loaded once per Redis client into typed attributes (EVALSHA thereafter)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript


def _source(name: str) -> str:
    return resources.files("gateway").joinpath("lua", f"{name}.lua").read_text()


class Scripts:
    apply: AsyncScript
    hydrate: AsyncScript
    set_tier: AsyncScript

    def __init__(self, redis: Any) -> None:
        self.apply = redis.register_script(_source("apply"))
        self.hydrate = redis.register_script(_source("hydrate"))
        self.set_tier = redis.register_script(_source("set_tier"))
