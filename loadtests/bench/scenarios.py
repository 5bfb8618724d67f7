"""The benchmark's scenarios: what wrk sends (loadtests/wrk/debit.lua) and which targets run it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # loadtests/
LUA = ROOT / "wrk" / "debit.lua"
ADMIN = "bench-admin-key"
USERS = 1000
BIG = 900_000  # credits each benchmark user starts with
BLOCK_COUNTS = (3, 20)  # users holding this many credit blocks (the others hold one)


@dataclass(frozen=True)
class Scenario:
    name: str
    env: dict[str, str]  # for loadtests/wrk/debit.lua
    path: str = ""  # after the debit path
    baselines: bool = False  # the baselines run it too
    expect_402: bool = False
    warm: bool = False
    paced: float = 0.0  # > 0: paced at this fraction of the target's peak on "1000 users"
    connections: int | None = None  # instead of --connections


SCENARIOS = [
    Scenario("1000 users", {"USERS": str(USERS), "PREFIX": "bench"}, baselines=True),
    Scenario(
        "1000 users at 70% of peak",
        {"USERS": str(USERS), "PREFIX": "bench"},
        baselines=True,
        paced=0.7,
    ),
    Scenario("one hot user", {"USERS": "1", "PREFIX": "bench"}, baselines=True),
    *(
        Scenario(
            f"1000 users, {n} blocks each",
            {"USERS": str(USERS), "PREFIX": f"blk{n}"},
            baselines=True,
            warm=True,  # their users loaded first, as "1000 users"'s are by the warm-up
        )
        for n in BLOCK_COUNTS
    ),
    Scenario(
        "batch (100 per request)",
        {"USERS": str(USERS), "PREFIX": "bench", "BATCH": "100"},
        path="/batch",
    ),
    Scenario(  # 8 connections: 8,000 debits in flight (64 would be 64,000)
        "batch (1000 per request, 8 connections)",
        {"USERS": str(USERS), "PREFIX": "bench", "BATCH": "1000"},
        path="/batch",
        connections=8,
    ),
    Scenario(  # the cold path: each request's user is created in PostgreSQL, then hydrated
        "new users (a first request each)", {"PREFIX": "new", "NEW_USERS": "1"}
    ),
    Scenario(
        "insufficient-credit storm",
        {"USERS": str(USERS), "PREFIX": "broke"},
        expect_402=True,
        warm=True,
    ),
    Scenario(
        "retries of one request_id",
        {"USERS": "1", "PREFIX": "bench", "RETRY_POOL": "100"},
    ),
]
