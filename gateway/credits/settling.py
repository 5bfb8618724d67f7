"""What the guards that fall back to PostgreSQL's truth (refunds, coupons) need from the
write-behind: a shard flushed up to now. The flusher, a layer above, provides it
(gateway/flusher/flush.py Flusher.settle); the services are handed one when they are built
(gateway/api/services.py), so this layer never imports the flusher."""

from __future__ import annotations

from typing import Protocol


class Settles(Protocol):
    async def settle(self, shard: int, tries: int = 50) -> bool:
        """Whether everything written to the shard before the call is in PostgreSQL (False:
        another flusher kept it held)."""
        ...
