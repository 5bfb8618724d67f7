"""Ports for private servers (loadtests/servers.py): below the kernel's ephemeral range, where
no outgoing connection can take one between its check and the server's bind (a cluster node
once failed to start in CI on a bus port an outgoing connection had taken), never the same one
twice, and free when handed out."""

from __future__ import annotations

import socket

from loadtests.servers import _bindable, _ephemeral_low, free_cluster_port, free_port


def test_ports_are_spare_distinct_and_below_the_ephemeral_range() -> None:
    low = _ephemeral_low()
    ports = [free_port() for _ in range(50)]
    cluster = [free_cluster_port() for _ in range(20)]
    assert len(set(ports + cluster)) == 70
    assert all(p < low for p in ports)
    assert all(p + 10000 < low for p in cluster)
    assert all(_bindable(p) for p in ports) and all(_bindable(p + 10000) for p in cluster)


def test_a_port_someone_listens_on_is_never_handed_out() -> None:
    """A tenth of the range held by listeners this test opened itself: none is handed out."""
    taken: list[socket.socket] = []
    try:
        for port in range(12000, _ephemeral_low(), 10):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            s.listen()
            taken.append(s)
        held = {s.getsockname()[1] for s in taken}
        assert len(held) > 1000
        fresh = [free_port() for _ in range(300)]
        assert not held & set(fresh)
    finally:
        for s in taken:
            s.close()
