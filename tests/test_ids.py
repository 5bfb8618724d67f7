"""Transaction ids are version 7 UUIDs: unique across threads and forked processes, ordered by
the millisecond they were made, read back by PostgreSQL's uuid type and by Python."""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from gateway.credits.ids import new_id


def test_ids_are_time_ordered_version_7_uuids() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids:
        u = uuid.UUID(text)
        assert (u.version, u.variant, str(u)) == (7, uuid.RFC_4122, text)
        assert before <= u.int >> 80 <= after  # the first 48 bits: Unix time in ms
    stamps = [uuid.UUID(t).int >> 80 for t in ids]
    assert stamps == sorted(stamps)
    # every hex digit turns up in every random position: nothing fixed by mistake
    free = [15, 16, 17, 20, 21, 22, *range(24, 36)]
    assert all(len({t[i] for t in ids}) == 16 for i in free)
    assert {t[19] for t in ids} == set("89ab")


def test_threads_never_share_an_id() -> None:
    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [new_id() for _ in range(5_000)], range(8)))
    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == len(ids) == 40_000


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    new_id()  # the parent holds a block of random bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids and leave
        os.write(write, ",".join(new_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = {t[15:] for t in os.read(read, 1 << 16).decode().split(",")}  # the random parts
    os.close(read)
    parent = {new_id()[15:] for _ in range(50)}
    assert len(child) == 50 and not child & parent
