"""The Lua scripts, loaded once per Redis client into typed attributes (EVALSHA thereafter).

Each script is ``lib.lua`` (shared helpers) followed by its own file; the numeric(12,6) maximum
is injected from ``gateway.credits.money`` so Python and Lua cannot disagree on it, the most
credit blocks a user may hold from MAX_BLOCKS here, and the backlog bound from the settings.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript

from gateway.credits.money import MAX_MICRO

MAX_BLOCKS = 100  # open credit blocks a user may hold (lib.lua; a grant past it is a 422)


def _file(name: str) -> str:
    return resources.files("gateway.credits").joinpath("lua", f"{name}.lua").read_text()


def source(name: str, max_backlog: int = 500_000) -> str:
    """The full text of a script as Redis runs it."""
    if name == "hydrate":  # no header, no helpers
        return _file(name)
    constants = (
        f"local MAX = {MAX_MICRO}\nlocal BACKLOG_MAX = {max_backlog}\n"
        f"local MAX_BLOCKS = {MAX_BLOCKS}\n"
    )
    return f"{constants}{_file('lib')}\n{_file(name)}"


NAMES = (
    "apply",
    "apply_many",
    "balance",
    "hydrate",
    "set_tier",
    "reset",
    "reserve",
    "commit",
    "release",
    "refund",
    "blocks",
    "extend",
    "resync",
    "record",
    "renew_many",
)


class Scripts:
    apply: AsyncScript
    apply_many: AsyncScript
    balance: AsyncScript
    hydrate: AsyncScript
    set_tier: AsyncScript
    reset: AsyncScript
    reserve: AsyncScript
    commit: AsyncScript
    release: AsyncScript
    refund: AsyncScript
    blocks: AsyncScript
    extend: AsyncScript
    resync: AsyncScript
    record: AsyncScript
    renew_many: AsyncScript

    def __init__(self, redis: Any, max_backlog: int = 500_000) -> None:
        for name in NAMES:
            setattr(self, name, redis.register_script(source(name, max_backlog)))
