"""Every Redis key name the gateway uses is built here, and nowhere else.

Layout (prefix ``m`` by default, ``S`` the user's shard, ``U`` the percent-encoded user id):

- ``m:{sS}:u:U``        hash, the user's state: bal, alloc, tier, cap, reset, ver (micro-credits)
- ``m:{sS}:i:B:T``      hash, idempotency records of the shard's requests made in time slice T
                        (Redis's clock, slices as long as the idempotency window), bucket B:
                        field the request's digest, value what a replay answers (expires)
- ``m:{sS}:h:U``        sorted set, the user's open holds: member ``RESID|micro``, score expiry (ms)
- ``m:{sS}:rv:RESID``   hash, one reservation (user, amount, expiry, state, settlement)
- ``m:{sS}:rf:U:TXN``   string, micro-credits refunded so far of debit TXN (expires)
- ``m:{sS}:events``     stream, the shard's unflushed ledger events, drained by the flusher
- ``m:{sS}:w``          string, the shard's beacon: written before each WAIT in replica mode
- ``m:marker``          string, set once per Redis data set (gone = Redis lost its data)
- ``m:flushers``        sorted set, running flushers (host:pid) by their last beat (epoch s)
- ``m:schema``          string, the newest migration applied (serve starts without PostgreSQL)

The hash tag ``{sS}`` puts a user's state, its idempotency records and its shard's event
stream in one Redis Cluster slot, so each Lua script touches a single slot, while users
spread over ``shards`` slots. User ids are percent-encoded (``{``, ``}``, ``:``, ``%``,
spaces and non-ASCII become ``%XX``), so no user id can alter the hash tag or collide with
another user's keys. Request ids appear only through their digest (`record`).

Idempotency records are fields of small hashes rather than keys of their own: a key costs
Redis ~150 B before its value, a field of a hash Redis keeps as a listpack (at most
``hash-max-listpack-entries``, 128 by default) about 10 B. ``buckets`` spreads a shard's
records of a time slice over that many hashes; it is sized from the request rate the
deployment plans for (gateway/base/settings.py ``record_buckets``), so a bucket holds ~64.
The scripts append the time slice to the bucket's key (lib.lua, idempotency records).
"""

from __future__ import annotations

import hashlib
import re
import uuid
import zlib
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote

from gateway.base.settings import Settings, record_buckets


def shard_of(user_id: str, shards: int) -> int:
    return zlib.crc32(user_id.encode()) % shards


_RESERVATION_ID = re.compile(r"^rv([0-9]{1,5})_[0-9a-f]{32}\Z")


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*\Z")  # what quote(safe="") leaves as it is


def encode_user(user_id: str) -> str:
    return user_id if _UNRESERVED.match(user_id) else quote(user_id, safe="")


def _parts(prefix: str, shard: int, user_id: str) -> tuple[str, str]:
    """What comes before and after the type letter in a user's keys: ``m:{s3}:`` and ``:bob``."""
    return f"{prefix}:{{s{shard}}}:", f":{encode_user(user_id)}"


@lru_cache(maxsize=65_536)
def _user_part(prefix: str, shards: int, user_id: str) -> tuple[str, str]:
    """_parts, cached: every request builds three or four keys of its user, and the same users
    come back."""
    return _parts(prefix, shard_of(user_id, shards), user_id)


# Bytes of a request's digest (of its user and request id) that name its record in a bucket;
# the bucket comes from the next four. 56 bits within one of shards x buckets hashes: two of
# 100M live requests share a field with odds ~1e-7 (and then their bodies' fingerprints
# still differ, a 409, with odds 1 - 2**-32).
RECORD_FIELD = 7


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str
    shards: int
    buckets: int = 1  # idempotency buckets a shard has per time slice (see above)

    def _base(self, user_id: str) -> str:
        return f"{self.prefix}:{{s{shard_of(user_id, self.shards)}}}"

    def user(self, user_id: str) -> str:
        head, tail = _user_part(self.prefix, self.shards, user_id)
        return f"{head}u{tail}"

    def user_id_of(self, key: str) -> str | None:
        """The user whose state key this is (`user` read back), or None for any other key."""
        head = f"{self.prefix}:{{s"
        shard, sep, encoded = key[len(head) :].partition("}:u:")
        if not key.startswith(head) or not sep or not shard.isdigit() or ":" in encoded:
            return None
        return unquote(encoded) if "%" in encoded else encoded

    def record(self, user_id: str, request_id: str) -> tuple[str, bytes]:
        """The bucket holding the idempotency record of user_id's request_id (the scripts add
        the time slice) and the record's field in it."""
        user = user_id.encode()
        digest = hashlib.blake2b(
            b"%d:%b%b" % (len(user), user, request_id.encode()), digest_size=RECORD_FIELD + 4
        ).digest()
        bucket = int.from_bytes(digest[RECORD_FIELD:]) % self.buckets
        head = _user_part(self.prefix, self.shards, user_id)[0]
        return f"{head}i:{bucket}", digest[:RECORD_FIELD]

    def request(self, user_id: str, request_id: str) -> str:
        """The bucket of user_id's request_id's record (`record`)."""
        return self.record(user_id, request_id)[0]

    def refunded(self, user_id: str, transaction_id: str) -> str:
        """How much of a debit has been refunded (kept while refunds are unflushed)."""
        return f"{self._base(user_id)}:rf:{encode_user(user_id)}:{transaction_id}"

    def holds(self, user_id: str) -> str:
        head, tail = _user_part(self.prefix, self.shards, user_id)
        return f"{head}h{tail}"

    def users_in(self, shard: int, user_ids: list[str]) -> list[str]:
        """`user` for many users of one shard the caller has already computed, in their order,
        without the cache: reconcile's million users a run would only churn it."""
        head = f"{self.prefix}:{{s{shard}}}:u:"
        return [head + encode_user(u) for u in user_ids]

    def state_and_holds(self, user_id: str) -> tuple[int, str, str]:
        """The user's shard, state key and holds key (`user`, `holds`) without the cache: the
        renewal cron's million users a run would only churn it."""
        shard = shard_of(user_id, self.shards)
        head, tail = _parts(self.prefix, shard, user_id)
        return shard, f"{head}u{tail}", f"{head}h{tail}"

    def new_reservation_id(self, user_id: str) -> str:
        """Reservation ids carry the user's shard, so commit and release find the slot."""
        return f"rv{shard_of(user_id, self.shards)}_{uuid.uuid4().hex}"

    def reservation(self, reservation_id: str) -> str | None:
        """The reservation's key, or None when the id is not one this gateway issues."""
        m = _RESERVATION_ID.match(reservation_id)
        if m is None or int(m.group(1)) >= self.shards:
            return None
        return f"{self.prefix}:{{s{m.group(1)}}}:rv:{reservation_id}"

    def stream(self, shard: int) -> str:
        return f"{self.prefix}:{{s{shard}}}:events"

    def dead(self, shard: int) -> str:
        """The shard's events PostgreSQL refused, kept for an operator (docs/operations.md)."""
        return f"{self.prefix}:{{s{shard}}}:dead"

    def user_stream(self, user_id: str) -> str:
        return self.stream(shard_of(user_id, self.shards))

    def marker(self) -> str:
        """Set once per Redis data set; its absence means Redis lost its data."""
        return f"{self.prefix}:marker"

    def flushers(self) -> str:
        """Sorted set of running flushers: member host:pid, score its last beat (Redis's
        time, epoch s). Health counts those that beat lately."""
        return f"{self.prefix}:flushers"

    def schema(self) -> str:
        """The newest migration `metering serve` applied to PostgreSQL: lets serve start while
        PostgreSQL is down when the schema is known to be current."""
        return f"{self.prefix}:schema"

    def beacon_of(self, key: str) -> str:
        """The beacon in key's slot (its hash tag): a write for WAIT to confirm after calls that
        may have written nothing themselves (gateway/base/durable.py)."""
        start = key.index("{")
        return f"{self.prefix}:{key[start : key.index('}', start) + 1]}:w"

    def all_streams(self) -> list[str]:
        return [self.stream(s) for s in range(self.shards)]

    def pattern(self) -> str:
        """Glob matching every sharded key (users, requests, holds, streams) under this prefix."""
        return f"{self.prefix}:{{s*"


def keys_of(settings: Settings) -> Keys:
    """The key layout a deployment's settings give (every process must agree on it)."""
    return Keys(settings.key_prefix, settings.shards, record_buckets(settings))
