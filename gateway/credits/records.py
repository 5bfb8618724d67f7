"""What the scripts get for a request's idempotency record (gateway/credits/lua/lib.lua).

``rec`` is 28 bytes: the record's field in its bucket (gateway/credits/keys.py ``record``),
the first 4 bytes of the body's fingerprint, the kind of id the request makes (``u`` a
transaction id, ``r`` a reservation id, ``t`` anything else) and, for ``u`` and ``r``, the
id's 16 bytes, so that the record stores it in 16 bytes instead of 36 and a replay gives the
same text back. 4 bytes of fingerprint tell a different body under a reused request id from
a retry (409) with odds of 1 - 2**-32.
"""

from __future__ import annotations

_NO_ID = bytes(16)


def record_arg(field: bytes, fp: str, made: str) -> bytes:
    """rec for a request (field: Keys.record; fp: schemas.fingerprint; made: the transaction or
    reservation id the request makes)."""
    head = field + bytes.fromhex(fp[:8])
    if len(made) == 36 and made[8] == "-":  # a transaction id (gateway/credits/ids.py)
        return head + b"u" + bytes.fromhex(made.replace("-", ""))
    shard, sep, tail = made.partition("_")
    if sep and shard.startswith("rv") and len(tail) == 32:  # a reservation id (keys.py)
        return head + b"r" + bytes.fromhex(tail)
    return head + b"t" + _NO_ID
