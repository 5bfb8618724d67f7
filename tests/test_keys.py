"""Key layout: awkward user ids cannot collide with each other or with internal keys, and all
of a user's keys (with its shard's stream) share one Redis Cluster slot."""

from __future__ import annotations

import itertools

import pytest
from redis.crc import key_slot

from gateway.credits.keys import Keys, shard_of

AWKWARD = [
    "a",
    "a{b}",
    "{a}",
    "a}",
    "}{",
    "a:b",
    "a:r:b",
    "a}:r:x",
    "with space",
    " ",
    "üñí©ødé",
    "%7B",
    "%",
    "a%3Ab",
    "x" * 255,
    "é" * 127 + "x",
    "日本" * 42,
    "sys:create",
    "m",
    "",
]


def all_keys(k: Keys, user: str) -> list[str]:
    return [
        k.user(user),
        k.request(user, "r:1"),
        k.holds(user),
        k.refunded(user, "t"),
        k.user_stream(user),
    ]


@pytest.mark.parametrize("user", [u for u in AWKWARD if u])
def test_a_users_keys_share_one_slot(user: str) -> None:
    k = Keys("m", 16)
    slots = {key_slot(key.encode()) for key in all_keys(k, user)}
    assert len(slots) == 1
    assert len(user.encode()) <= 255 * 3


def test_no_two_users_share_a_key() -> None:
    k = Keys("m", 16)
    seen: dict[str, str] = {}
    for user in AWKWARD:
        # a shard's users share its stream and its idempotency buckets (by record field)
        own = [
            key
            for key in all_keys(k, user)
            if key not in (k.user_stream(user), k.request(user, "r:1"))
        ]
        for key in own:
            assert seen.setdefault(key, user) == user, (key, user, seen[key])
        field = k.record(user, "r:1")[1]
        assert seen.setdefault(field.hex(), user) == user
    internal = {k.marker(), *k.all_streams()}
    assert internal.isdisjoint(seen)


def test_shards_spread_users_over_slots() -> None:
    k = Keys("m", 16)
    slots = {key_slot(k.user(f"user-{i}").encode()) for i in range(1000)}
    assert len(slots) == 16
    assert len({key_slot(s.encode()) for s in k.all_streams()}) == 16


def test_request_ids_cannot_reach_other_keys() -> None:
    """A request's record is named by a digest of its user and request id, in one of its
    shard's buckets: no request id can name another key, or another user's record."""
    k = Keys("m", 16, buckets=1000)
    rids = ["x", "x:u:y", "}", "{s1}", "../../", " ", ""]
    records = [k.record("u", r) for r in rids]
    assert len({field for _, field in records}) == len(rids)
    assert all(key.startswith("m:{s") and ":i:" in key for key, _ in records)
    assert not any(key in {k.user("u"), k.holds("u")} for key, _ in records)
    # the user's end and the request id's start cannot trade characters
    assert k.record("ab", "c")[1] != k.record("a", "bc")[1]
    buckets = {k.record(f"user-{i}", "r")[0].rsplit(":", 1)[1] for i in range(3000)}
    assert len(buckets) > 900  # spread over the buckets


def test_reservation_ids_are_validated() -> None:
    k = Keys("m", 16)
    rid = k.new_reservation_id("someone")
    assert k.reservation(rid) is not None
    for bad in ["", "rv1", "rv99_" + "0" * 32, "rv1_" + "g" * 32, "rv1_" + "0" * 31, "x" + rid]:
        assert k.reservation(bad) is None
    assert list(itertools.islice((key_slot(k.reservation(rid).encode()),), 1)) == [
        key_slot(k.user("someone").encode())
    ]


def test_a_user_key_reads_back_as_its_user() -> None:
    """reconcile reads the users Redis holds from their keys (Keys.user_id_of)."""
    keys = Keys("m", 16)
    for user in AWKWARD:
        assert keys.user_id_of(keys.user(user)) == user
        assert keys.user_id_of(keys.request(user, "r:1")) is None
        assert keys.user_id_of(keys.request(user, "x}:u:y")) is None
        assert keys.user_id_of(keys.holds(user)) is None
        assert Keys("other", 16).user_id_of(keys.user(user)) is None


def test_the_uncached_key_builders_build_the_cached_keys() -> None:
    """reconcile (users_in) and the renewal cron (state_and_holds) name keys without the cache:
    the same keys as `user` and `holds`."""
    keys = Keys("m", 16)
    for user in AWKWARD:
        shard = shard_of(user, 16)
        assert keys.users_in(shard, [user, user]) == [keys.user(user)] * 2
        assert keys.state_and_holds(user) == (shard, keys.user(user), keys.holds(user))
