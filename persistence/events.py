"""The ledger event as the Lua scripts write it to a shard stream (``emit`` in
gateway/credits/lua/lib.lua).

An event is one stream field, ``e``, whose value is the event's values in the order of
``FIELDS``, joined by the unit separator (0x1F); '' stands for "none". One value instead of a
field per name makes each event one string to write, to read back (XRANGE builds a reply of two
strings an entry, not forty) and to parse: the flusher hands the lines to PostgreSQL as they
are and PostgreSQL splits them. No value can hold 0x1F: user ids, request ids, model, tier and
key names are refused with control characters at the door, numbers and ids are generated, and
metadata is JSON, where control characters are escaped.

Amounts are micro-credits, ``ts`` is epoch milliseconds, ``spent`` the spending in the period
after the event, ``meta`` JSON, ``reset`` the ISO start of a period the event renewed, ``ref`` the
debit a refund returns, ``actor`` the API key name behind an admin action (audited) and ``resv``
the reservation a committed usage event charges, ``blk`` the user's open credit blocks after the
event (the flusher makes credit_grants match the newest), ``draws`` the blocks a charge took
from (the ledger row's draws column), ``tcr``/``tcw``/``trs`` a priced call's cached input,
cache write and reasoning tokens.
"""

from __future__ import annotations

from collections.abc import Mapping

FIELD = "e"  # the stream field that holds the line
SEP = "\x1f"
FIELDS = (
    "t",  # type
    "u",  # user_id
    "tx",  # transaction id
    "rid",  # request_id
    "amt",
    "bal",  # balance after
    "ver",  # the user's Redis version after
    "ts",
    "spent",
    "model",
    "tin",  # input tokens
    "tout",  # output tokens
    "meta",
    "tier",
    "alloc",
    "cap",
    "reset",
    "ref",
    "actor",
    "resv",  # the reservation a usage event commits
    "blk",  # the user's open credit blocks after the event: 'rem:id:kind:prio:exp:created',...
    "draws",  # the blocks a charge drew from: 'id:micro',...
    "tcr",  # cached input tokens (read from the provider's cache)
    "tcw",  # cache write tokens
    "trs",  # reasoning tokens (part of tout)
)
# Lines written before credit blocks end at resv, lines written before the token kinds at
# draws: read as having none of the later values.
BEFORE_BLOCKS = 20
BEFORE_TOKEN_KINDS = 22


def line_of(entry: Mapping[str, str]) -> str:
    """The event line of a stream entry's fields. Entries written before the line format (a
    field per name) are turned into a line, so an upgrade flushes what the old version left."""
    line = entry.get(FIELD)
    if line is not None:
        return line
    return SEP.join(entry.get(name, "") for name in FIELDS)


def fields(line: str) -> dict[str, str]:
    """An event line as name → value ('' for none)."""
    values = line.split(SEP)
    if len(values) in (BEFORE_BLOCKS, BEFORE_TOKEN_KINDS):
        values += [""] * (len(FIELDS) - len(values))
    if len(values) != len(FIELDS):
        raise ValueError(f"an event has {len(values)} values, not {len(FIELDS)}: {line[:200]!r}")
    return dict(zip(FIELDS, values, strict=True))
