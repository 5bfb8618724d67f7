"""gateway/base/packing.py: hiredis packs what redis-py's Python packer would, byte for byte,
and what hiredis refuses gets redis-py's own answer."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import DataError

from gateway.base import connect, packing

PYTHON_PACK = packing._python_pack
COMMANDS: list[tuple[Any, ...]] = [
    # a debit's apply call as the coalescer sends it: keys, the header, amounts, fields
    (
        "EVALSHA",
        "3f" * 20,
        4,
        "m:{s3}:u:user-1",
        "m:{s3}:r:12",
        "m:{s3}:e",
        "m:{s3}:h:user-1",
        "user-1",
        0,
        "month",
        "0192aa3c-7d1e-7b3a-9c1f-1e2d3c4b5a69",
        -100,
        "req-1",
        "deadbeef|0192aa3c",
        86400,
        "usage",
        "",
        "model",
        "gpt-4o",
        "tin",
        12,
    ),
    ("SET", "k", 1.5),
    ("SET", "k", 0.1),
    ("SET", "k", 1e20),
    ("SET", "k", -3),
    ("SET", "k", 2**70),
    ("SET", "k", "é✓ ünï"),
    ("SET", b"k", b"\x00\xff\r\n"),
    ("SET", "k", ""),
    ("CONFIG GET", "maxmemory-policy"),  # a first argument holding spaces: split, as redis-py
    (b"CLIENT SETNAME", "x"),
    ("SET", "k", memoryview(b"view")),  # hiredis refuses it: redis-py packs it
    ("SET", "k", bytearray(b"array")),
    ("HSET", "h", *[str(i) for i in range(2000)]),  # past redis-py's buffer cutoff
]


def test_installed_by_the_gateway() -> None:
    assert connect.packing is packing
    assert AbstractConnection.pack_command is packing._pack


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: str(a[0])[:16])
def test_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    conn = Connection()
    assert b"".join(conn.pack_command(*args)) == b"".join(
        bytes(part) for part in PYTHON_PACK(conn, *args)
    )


@pytest.mark.parametrize("bad", [None, True, [1], {"a": 1}])
def test_refused_as_redis_py_refuses(bad: object) -> None:
    conn = Connection()
    with pytest.raises(DataError):
        PYTHON_PACK(conn, "SET", "k", bad)
    with pytest.raises(DataError):
        conn.pack_command("SET", "k", bad)


def test_text_not_utf8_strict_packed_by_redis_py() -> None:
    conn = Connection(encoding="latin-1")
    assert conn.pack_command("SET", "k", "é") == PYTHON_PACK(conn, "SET", "k", "é")
    assert b"\xe9" in b"".join(conn.pack_command("SET", "k", "é"))
