"""The credit blocks text lib.lua keeps in a user's 'blks' field, read and written on the Python
side in this one place: entries 'remaining:id:kind:priority:expires_ms:created_ms:granted'
(micro-credits and epoch milliseconds; expires_ms 0: never; entries from before migration 0012
have no granted) in spending order, joined by ','. docs/credit-blocks.md has the model."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.credits.clock import epoch_ms
from gateway.credits.money import to_micro
from persistence.users import GrantRow


@dataclass(frozen=True, slots=True)
class BlockEntry:
    id: str
    kind: str
    priority: int
    expires_ms: int  # 0: never
    created_ms: int
    remaining: int  # micro-credits
    granted: int  # micro-credits put in the block (its remainder for an entry without it)


def parse_blocks(text: str | None) -> list[BlockEntry]:
    """The entries of a 'blks' text, in its (spending) order."""
    out = []
    for entry in (text or "").split(","):
        if entry:
            rem, block_id, kind, prio, exp, created, *granted = entry.split(":")
            given = granted[0] if granted and granted[0] else rem
            out.append(
                BlockEntry(block_id, kind, int(prio), int(exp), int(created), int(rem), int(given))
            )
    return out


def blocks_text(grants: list[GrantRow]) -> tuple[str, int]:
    """PostgreSQL's open blocks as lib.lua keeps them, sorted into spending order (priority,
    earliest expiry with none last, oldest, id), and their earliest expiry (0: none)."""
    entries = []
    for g in grants:
        expires = 0 if g.expires_at is None else epoch_ms(g.expires_at)
        granted = g.remaining if g.amount is None else g.amount
        order = (g.priority, expires or float("inf"), epoch_ms(g.created_at), g.id)
        entries.append(
            (
                order,
                f"{to_micro(g.remaining)}:{g.id}:{g.kind}:{g.priority}:{expires}:"
                f"{epoch_ms(g.created_at)}:{to_micro(granted)}",
            )
        )
    nexp = min((o[1] for o, _ in entries if o[1] != float("inf")), default=0)
    return ",".join(e for _, e in sorted(entries)), int(nexp)
