"""Private server processes on spare loopback ports, for the benchmark and for tests that stop,
kill or empty them.
The shared Redis and PostgreSQL a developer runs are never touched."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A spare port whose cluster bus port (10000 above it) is spare too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no spare port pair for a cluster node")


def _wait(check: object, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up")


class PrivateRedis:
    def __init__(self, *extra: str, aof: bool = False, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="metering-redis-")
        self.extra = list(extra)
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            self.dir,
            "--appendonly",
            "yes" if self.aof else "no",
            "--appendfsync",
            "always",
            "--enable-debug-command",
            "local",
            *self.extra,
        ]
        log = Path(self.dir) / "redis.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        try:
            _wait(client.ping, "redis-server")
        except RuntimeError:
            tail = log.read_text(errors="replace").splitlines()[-8:]
            raise RuntimeError(f"redis-server on {self.port} did not come up: {tail}") from None
        client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
            self.proc = None

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_redis(*extra: str) -> Iterator[str]:
    """A redis-server of our own; yields its URL and stops it afterwards."""
    server = PrivateRedis(*extra)
    server.start()
    try:
        yield server.url
    finally:
        server.close()


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
            _wait(
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
            _wait(
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
        _wait(self.healthy, "redis cluster")

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


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else name


class PrivatePostgres:
    """initdb + pg_ctl on a spare port, trust auth; as the postgres user when run as root.
    Without fsync for the tests (fast, nothing to keep); durable=True keeps PostgreSQL's
    default, as production runs it (the benchmark)."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="metering-pg-")
        self.data = os.path.join(self.dir, "data")
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        self._run(
            _pg_bin("initdb"), "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    @property
    def server(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}"
        if not self.durable:
            opts += " -c fsync=off"
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            self.data,
            "-o",
            opts,
            "-w",
            "-l",
            os.path.join(self.dir, "log"),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(_pg_bin("pg_ctl"), "-D", self.data, "-m", mode, "-w", "stop")

    def close(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class ServerProcess:
    """An HTTP server in its own process group, so a SIGKILL takes its workers with it."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        port: int | None = None,
        health: str = "/health/live",
        start_seconds: float = 30,
    ) -> None:
        self.port = port or free_port()
        self.args = args
        self.env = {**os.environ, **env}
        self.health = health
        self.start_seconds = start_seconds
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="metering-server-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [*self.args, "--port", str(self.port)],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait(
            lambda: httpx.get(f"{self.url}{self.health}", timeout=1).status_code < 500,
            f"{self.args[:4]} (log: {self.log})",
            self.start_seconds,
        )

    def kill(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc = None


class GatewayProcess(ServerProcess):
    """`metering serve` with the given environment; `wrapper` runs it under another command
    (``["faketime", "-f", "+2s"]``: an instance whose clock is 2 s ahead)."""

    def __init__(
        self, env: dict[str, str], workers: int = 1, wrapper: list[str] | None = None
    ) -> None:
        super().__init__(
            [
                *(wrapper or []),
                sys.executable,
                "-m",
                "gateway.ops.cli",
                "serve",
                "--workers",
                str(workers),
            ],
            env,
        )
