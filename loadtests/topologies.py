"""Redis topologies of our own on spare loopback ports, for the failover, Sentinel and cluster
tests: a primary with replicas (which can be frozen and cut off), a Sentinel group watching them,
a Redis Cluster with or without replicas."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from loadtests.servers import PrivateRedis, free_cluster_port, free_port, wait_until


def freeze(server: PrivateRedis) -> None:
    """The server stops answering, its connections open (SIGSTOP): a host that hangs, or a
    partition."""
    if server.proc is not None:
        server.proc.send_signal(signal.SIGSTOP)


def online_replicas(primary: PrivateRedis) -> int:
    """Replicas that finished their sync with the primary and follow it."""
    client = redis.Redis(port=primary.port, decode_responses=True)
    try:
        info = client.info("replication")
    except redis.RedisError:
        return 0
    finally:
        client.close()
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


def cut_off(primary: PrivateRedis) -> None:
    """The primary drops its replicas' links: what it takes from now on reaches none of them
    (with them frozen first, they cannot reconnect: a partition)."""
    client = redis.Redis(port=primary.port)
    try:
        client.client_kill_filter(_type="replica")
    finally:
        client.close()


def thaw(server: PrivateRedis) -> None:
    if server.proc is not None:
        server.proc.send_signal(signal.SIGCONT)


class PrivateReplicated:
    """A primary and its replica of our own; the replica can be frozen (SIGSTOP: a partition
    or a host that stopped answering, its link still up) and thawed."""

    def __init__(self, aof: bool = False, replicas: int = 1) -> None:
        self.primary = PrivateRedis(aof=aof)
        self.replicas = [
            PrivateRedis("--replicaof", "127.0.0.1", str(self.primary.port), aof=aof)
            for _ in range(replicas)
        ]
        self.replica = self.replicas[0]

    @property
    def url(self) -> str:
        return self.primary.url

    def start(self) -> None:
        self.primary.start()
        for node in self.replicas:
            node.start()
            replica = redis.Redis(port=node.port)
            wait_until(
                lambda r=replica: r.info("replication")["master_link_status"] == "up",
                "the replica's sync",
            )
            replica.close()

    def freeze(self) -> None:
        """Every replica stops answering (SIGSTOP)."""
        for node in self.replicas:
            freeze(node)

    def thaw(self) -> None:
        for node in self.replicas:
            thaw(node)

    def in_sync(self) -> None:
        """Wait until the replica has every write the primary took."""
        client = redis.Redis(port=self.primary.port)
        try:
            assert int(client.execute_command("WAIT", 1, 5000)) == 1, "the replica lags"
        finally:
            client.close()

    def close(self) -> None:
        self.thaw()
        self.primary.close()
        for node in self.replicas:
            node.close()


class PrivateSentinels:
    """A primary, its replica and three sentinels watching them (``redis-server --sentinel``),
    on spare ports: the gateway's ``redis+sentinel://`` URL for it, and the means to fail it
    over (kill the primary; bring it back from its AOF)."""

    SERVICE = "metering"

    def __init__(self, down_after_ms: int = 1000, replicas: int = 1) -> None:
        self.pair = PrivateReplicated(aof=True, replicas=replicas)
        self.primary, self.replica = self.pair.primary, self.pair.replica
        self.down_after_ms = down_after_ms
        self.sentinels = [free_port() for _ in range(3)]
        self.dir = tempfile.mkdtemp(prefix="metering-sentinel-")
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{nodes}/{self.SERVICE}/0"

    def start(self) -> None:
        self.pair.start()
        for port in self.sentinels:
            conf = Path(self.dir) / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )
            self.procs.append(
                subprocess.Popen(
                    ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL
                )
            )
        for port in self.sentinels:  # each knows the other two and the replica
            client = redis.Redis(port=port, decode_responses=True)
            wait_until(
                lambda c=client: (
                    len(c.execute_command("SENTINEL", "SENTINELS", self.SERVICE)) == 2
                    and len(c.execute_command("SENTINEL", "REPLICAS", self.SERVICE))
                    == len(self.pair.replicas)
                ),
                "the sentinels",
            )
            client.close()

    def primary_port(self) -> int:
        """The port the sentinels name as the primary now."""
        client = redis.Redis(port=self.sentinels[0], decode_responses=True)
        try:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
            return int(port)
        finally:
            client.close()

    def in_sync(self) -> None:
        self.pair.in_sync()

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=20)
        self.pair.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateCluster:
    """A Redis Cluster of its own on spare ports, joined with ``redis-cli --cluster create``,
    slots spread evenly: masters, each with `replicas` replicas (none by default)."""

    def __init__(
        self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 3000, aof: bool = False
    ) -> None:
        self.replicas = replicas
        self.nodes = [
            PrivateRedis(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(node_timeout_ms),
                aof=aof,
                port=free_cluster_port(),
            )
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """The gateway's URL for it (any node will do as the seed)."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # 9 nodes with AOF joining and syncing on a loaded 2-core CI box took over 30 s once
        # (8 s idle): the wait is generous, and a timeout says what the nodes saw.
        try:
            wait_until(self.healthy, "redis cluster", seconds=120)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {self._nodes_view()}") from None

    def healthy(self) -> bool:
        """Every running node sees the cluster ok, and every master has its replicas."""
        for node in self.nodes:
            if node.proc is None:
                continue
            client = redis.Redis(port=node.port)
            try:
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        if self.replicas == 0:
            return True
        masters = self.masters()
        return len(masters) == len(self.nodes) // (1 + self.replicas) and all(
            len(self.replicas_of(m)) >= self.replicas and online_replicas(m) >= self.replicas
            for m in masters
        )

    def _nodes_view(self) -> list[dict[str, str]]:
        """CLUSTER NODES as a running node sees it: id, port, flags and master id a node."""
        for node in self.nodes:
            if node.proc is None:
                continue
            client = redis.Redis(port=node.port, decode_responses=True)
            try:
                nodes = client.cluster("nodes")
            except redis.RedisError:
                continue
            finally:
                client.close()
            return [
                {
                    "id": str(v["node_id"]),
                    "port": address.split("@")[0].rsplit(":", 1)[1],
                    "flags": str(v["flags"]),
                    "master": str(v["master_id"]),
                }
                for address, v in nodes.items()
            ]
        raise AssertionError("no cluster node answers")

    def masters(self) -> list[PrivateRedis]:
        """The nodes serving slots now (a failover changes which)."""
        ports = {
            int(v["port"])
            for v in self._nodes_view()
            if "master" in v["flags"] and "fail" not in v["flags"]
        }
        return [n for n in self.nodes if n.port in ports]

    def replicas_of(self, master: PrivateRedis) -> list[PrivateRedis]:
        view = self._nodes_view()
        ids = {v["id"] for v in view if int(v["port"]) == master.port}
        ports = {
            int(v["port"])
            for v in view
            if v["master"] in ids and "fail" not in v["flags"] and "slave" in v["flags"]
        }
        return [n for n in self.nodes if n.port in ports]

    def close(self) -> None:
        for node in self.nodes:
            thaw(node)
            node.close()


@contextmanager
def private_cluster(masters: int = 3, replicas: int = 0) -> Iterator[PrivateCluster]:
    cluster = PrivateCluster(masters, replicas)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
