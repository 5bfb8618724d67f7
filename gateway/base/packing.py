"""Commands packed by hiredis on asyncio connections.

redis-py packs a command into the Redis protocol in C (hiredis.pack_command) on its sync
connections only; its asyncio connections, which the gateway uses, pack every argument in Python
(redis/redis-py#4176, fix proposed in #4191). A debit's apply call has about 25 arguments:
26 µs to pack in Python against 3.5 µs in hiredis on this machine (docs/performance.md,
"Commands packed in C"). Until redis-py does it, install() gives every asyncio connection class
(single server, Cluster, Sentinel, TLS, unix socket: they all inherit
AbstractConnection.pack_command) the C packer, with redis-py's own splitting of a first
argument holding spaces ('CONFIG GET'). Whatever hiredis refuses (None, a bool, a memoryview, a
list) goes to redis-py's packer, which packs it or raises its usual DataError: the bytes and
the errors are redis-py's (tests/test_packing.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hiredis import pack_command as _hiredis_pack  # a dependency: redis[hiredis]
from redis.asyncio.connection import AbstractConnection

_python_pack: Callable[..., list[bytes]] = AbstractConnection.pack_command


def _pack(self: AbstractConnection, *args: Any) -> list[bytes]:
    encoder = self.encoder
    if encoder.encoding != "utf-8" or encoder.encoding_errors != "strict":
        return _python_pack(self, *args)  # hiredis encodes text as strict UTF-8 only
    first = args[0]
    if isinstance(first, str):
        if " " in first:
            args = (*first.encode().split(), *args[1:])
    elif isinstance(first, bytes) and b" " in first:
        args = (*first.split(), *args[1:])
    try:
        return [_hiredis_pack(args)]
    except TypeError:
        return _python_pack(self, *args)


def install() -> None:
    """Pack with hiredis from now on (idempotent)."""
    AbstractConnection.pack_command = _pack  # type: ignore[method-assign]
