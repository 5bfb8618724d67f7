"""Every Redis key name the gateway uses is built here, and nowhere else.

Layout (prefix ``m`` by default, ``S`` the user's shard, ``U`` the percent-encoded user id):

- ``m:{sS}:u:U``        hash, the user's state: bal, alloc, tier, cap, reset, ver (micro-credits)
- ``m:{sS}:r:U:RID``    string, an idempotency record for request RID of user U (expires)
- ``m:{sS}:events``     stream, the shard's unflushed ledger events, drained by the flusher

The hash tag ``{sS}`` puts a user's state, its idempotency records and its shard's event
stream in one Redis Cluster slot, so each Lua script touches a single slot, while users
spread over ``shards`` slots. User ids are percent-encoded (``{``, ``}``, ``:``, ``%``,
spaces and non-ASCII become ``%XX``), so no user id can alter the hash tag or collide with
another user's keys; request ids are the last segment and need no encoding.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from urllib.parse import quote


def shard_of(user_id: str, shards: int) -> int:
    return zlib.crc32(user_id.encode()) % shards


def encode_user(user_id: str) -> str:
    return quote(user_id, safe="")


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str
    shards: int

    def _base(self, user_id: str) -> str:
        return f"{self.prefix}:{{s{shard_of(user_id, self.shards)}}}"

    def user(self, user_id: str) -> str:
        return f"{self._base(user_id)}:u:{encode_user(user_id)}"

    def request(self, user_id: str, request_id: str) -> str:
        return f"{self._base(user_id)}:r:{encode_user(user_id)}:{request_id}"

    def stream(self, shard: int) -> str:
        return f"{self.prefix}:{{s{shard}}}:events"

    def user_stream(self, user_id: str) -> str:
        return self.stream(shard_of(user_id, self.shards))

    def all_streams(self) -> list[str]:
        return [self.stream(s) for s in range(self.shards)]

    def pattern(self) -> str:
        """Glob matching every key under this prefix (for ops tools and test cleanup)."""
        return f"{self.prefix}:*"
