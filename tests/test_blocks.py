"""Credit blocks in Lua (gateway/credits/lua/lib.lua, docs/credit-blocks.md): the spending order
and the draw on the blocks text, against a plain Python statement of the same rule, on real
Redis and fakeredis."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from gateway.credits.scripts import source

PROBE = """
local blocks = {}
for _, b in ipairs(cjson.decode(ARGV[5])) do
  blocks[#blocks + 1] = {id = b[1], kind = b[2], prio = b[3], exp = b[4], created = b[5],
                         rem = b[6], amt = b[6]}
end
local text = join_blocks(blocks)
local order = {}
for _, b in ipairs(parse_blocks(text)) do order[#order + 1] = b.id end
local after, draws = draw(text, tonumber(ARGV[6]))
local left = {}
for _, b in ipairs(parse_blocks(after or text)) do left[#left + 1] = b.id .. ':' .. int(b.rem) end
return {cjson.encode(order), draws and table.concat(draws, ',') or 'short',
        table.concat(left, ',')}
"""


Block = tuple[str, str, int, int, int, int]  # id, kind, priority, expires_ms, created_ms, rem


def expected(blocks: list[Block], amount: int) -> tuple[list[str], str, str]:
    """The rule as docs/credit-blocks.md states it: priority ascending, earliest expiry (none
    last), oldest, id; each block gives what it has until the amount is covered; a block a draw
    empties closes, except the allocation block (it lives until its period ends)."""

    def key(b: Block) -> tuple[int, float, int, str]:
        return (b[2], b[3] or math.inf, b[4], b[0])

    order = sorted(blocks, key=key)
    if sum(b[5] for b in blocks) < amount:
        return [b[0] for b in order], "short", ",".join(f"{b[0]}:{b[5]}" for b in order)
    left, draws, after = amount, [], []
    for b in order:
        take = min(b[5], left)
        left -= take
        if take:
            draws.append(f"{b[0]}:{take}")
        if b[5] - take or b[1] == "allocation" or not take:  # a draw that empties it closes it
            after.append(f"{b[0]}:{b[5] - take}")
    return [b[0] for b in order], ",".join(draws), ",".join(after)


def run(r: Any, blocks: list[Block], amount: int) -> tuple[list[str], str, str]:
    probe = r.register_script(source("lib") + PROBE)
    order, draws, after = probe(keys=[], args=["u", 0, "month", "tx", json.dumps(blocks), amount])
    return json.loads(order), draws, after


def test_the_allocation_is_spent_first_and_bought_credits_last(r: Any) -> None:
    blocks: list[Block] = [
        ("p", "purchase", 30, 0, 1, 20_000_000),
        ("a", "allocation", 10, 2_000, 3, 5_000_000),
        ("b", "bonus", 20, 1_000, 2, 3_000_000),
    ]
    assert run(r, blocks, 6_000_000) == (
        ["a", "b", "p"],
        "a:5000000,b:1000000",
        "a:0,b:2000000,p:20000000",
    )
    assert run(r, blocks, 28_000_000) == (
        ["a", "b", "p"],
        "a:5000000,b:3000000,p:20000000",
        "a:0",
    )
    assert run(r, blocks, 28_000_001)[1:] == ("short", "a:5000000,b:3000000,p:20000000")


def test_ties_go_to_the_earliest_expiry_then_the_oldest_then_the_id(r: Any) -> None:
    blocks: list[Block] = [
        ("z", "bonus", 20, 0, 1, 1),  # never expires: after those that do
        ("y", "bonus", 20, 500, 9, 1),
        ("x", "bonus", 20, 500, 5, 1),
        ("w", "bonus", 20, 900, 1, 1),
        ("v", "bonus", 20, 500, 5, 1),  # same expiry and age as x: by id
    ]
    assert run(r, blocks, 1)[0] == ["v", "x", "y", "w", "z"]


@pytest.mark.parametrize("seed", range(40))
def test_random_blocks_are_drawn_as_the_rule_says(r: Any, seed: int) -> None:
    rnd = random.Random(seed)
    kinds = ["allocation", "rollover", "bonus", "adjustment", "purchase"]
    blocks: list[Block] = [
        (
            f"id{n:02d}",
            rnd.choice(kinds),
            rnd.choice([0, 10, 15, 20, 25, 30, 100]),
            rnd.choice([0, 0, 1_000, 2_000, 10**12]),
            rnd.randrange(5),
            rnd.choice([0, 1, 999_999, 10**12 - 1, rnd.randrange(10**9)]),
        )
        for n in range(rnd.randrange(1, 12))
    ]
    total = sum(b[5] for b in blocks)
    amount = rnd.choice([1, total, total + 1, rnd.randrange(total + 2)]) if total else 1
    assert run(r, blocks, amount) == expected(blocks, amount)
