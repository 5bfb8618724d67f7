"""Transaction ids: time-ordered (version 7, RFC 9562) UUIDs as text.

The first 48 bits are the Unix time in milliseconds, the other 74 free bits random. Ids made
later sort later, so the ledger's primary key grows at its right edge instead of at random
places: at millions of rows the flusher's inserts touch a few recent index pages, not pages all
over a large index.

The hot path makes two per debit (its own, and one for a period renewal should the script need
it). Random bytes come from ``os.urandom`` in blocks of 256 ids, one system call per block;
a lock makes the block safe to share between threads, and a forked child starts a block of its
own (never the parent's rest).
"""

from __future__ import annotations

import os
import threading
import time

_BLOCK = 256  # ids per os.urandom call
_HEX = 20  # random hex digits per id: 3 (rand_a), 1 for the variant, 15 (rand_b), 1 spare
_VARIANT = "89ab89ab89ab89ab"  # the RFC 4122 variant: the first hex digit of the 4th group

_lock = threading.Lock()
_hex = ""
_pos = 0
_ms = 0
_stamp = "00000000-0000-7"  # the text of the time part for millisecond _ms


def new_id() -> str:
    global _hex, _pos, _ms, _stamp
    ms = time.time_ns() // 1_000_000
    with _lock:
        if ms != _ms:
            t = f"{ms:012x}"
            _ms, _stamp = ms, f"{t[:8]}-{t[8:]}-7"
        if _pos >= len(_hex):
            _hex, _pos = os.urandom(_BLOCK * _HEX // 2).hex(), 0
        i = _pos
        _pos = i + _HEX
        stamp, r = _stamp, _hex[i : i + _HEX]
    return f"{stamp}{r[:3]}-{_VARIANT[int(r[3], 16)]}{r[4:7]}-{r[7:19]}"


def _forget_block() -> None:
    global _hex, _pos, _lock
    _lock = threading.Lock()
    _hex, _pos = "", 0


os.register_at_fork(after_in_child=_forget_block)
