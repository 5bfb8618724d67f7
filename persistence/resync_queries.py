"""The statements of resyncs and repairs (gateway/flusher/resync.py, gateway/ops/repair.py):
after a failover took booked changes back from Redis, or when `metering reconcile --repair`
mends a drifted user. Imported by persistence/queries.py, so they are part of queries.ALL and
prepared on the migrated schema by the tests like every other."""

from __future__ import annotations

# A user's version as PostgreSQL has it (the resync: gateway/flusher/resync.py).
USER_VERSION = "SELECT redis_version FROM user_credits WHERE user_id = $1"

USER_GET_BALANCE = "SELECT credits_remaining FROM user_credits WHERE user_id = $1"

# A user PostgreSQL alone holds, its row set to its ledger's sum $2 (metering reconcile --repair)
USER_SET_BALANCE = (
    "UPDATE user_credits SET credits_remaining = $2, updated_at = now() WHERE user_id = $1"
)

# A resync made: $1 user, $2 fence (the resync event's version), $3 the correction (micro),
# $4 the last stream entry flushed, $5 the ledger's sum, which the row takes until the resync
# event moves it to Redis's state. It supersedes the user's open ones (a repair after a resync
# event was lost): it measured Redis as it is, and an older fence must not hold its event back.
RESYNC_RECORD = """
WITH r AS (
    INSERT INTO redis_resyncs (user_id, fence, delta, after_entry)
    VALUES ($1, $2, $3::bigint::numeric / 1000000, $4)
    ON CONFLICT DO NOTHING
), superseded AS (
    UPDATE redis_resyncs SET settled_at = now()
    WHERE user_id = $1 AND settled_at IS NULL AND fence <> $2
)
UPDATE user_credits SET credits_remaining = $5, updated_at = now() WHERE user_id = $1
"""

# The same lock, waited for (`metering reconcile --repair`: no flush of the shard meanwhile).
FLUSH_LOCK_WAIT = "SELECT pg_advisory_xact_lock(hashtext($1))"
