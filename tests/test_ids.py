"""Transaction ids are version 4 UUIDs that PostgreSQL's uuid type and Python both read back."""

from __future__ import annotations

import uuid

from gateway.ids import new_id


def test_ids_are_random_version_4_uuids() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        u = uuid.UUID(text)
        assert (u.version, u.variant, str(u)) == (4, uuid.RFC_4122, text)
    # every hex digit turns up in every free position: nothing fixed by mistake
    free = [i for i in range(36) if i not in (8, 13, 14, 18, 19, 23)]
    assert all(len({t[i] for t in ids}) == 16 for i in free)
