"""Private server processes on spare loopback ports, for the benchmark and for tests that stop,
kill or empty them.
The shared Redis and PostgreSQL a developer runs are never touched."""

from __future__ import annotations

import glob
import os
import random
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


def _ephemeral_low() -> int:
    """Where the kernel's ephemeral ports (those outgoing connections get) begin."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


# Private servers listen below the ephemeral range: a port taken from it (bind to port 0) can
# go to some outgoing connection between the check and the server's own bind, and the server
# then fails to start (seen in CI: a cluster node's bus port, 10000 above its port). Below it,
# only another listener can hold a port, and each is checked. A cluster node's bus port must
# fit below it too.
_LOW = 12000
_given: set[int] = set()
_random = random.Random(os.getpid() ^ time.monotonic_ns())


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _spare(gap: int) -> int:
    """A port nobody listens on (nor on port + gap, when gap), not handed out before by this
    process, below the ephemeral range."""
    high = _ephemeral_low() - gap
    for _ in range(1000 if high > _LOW else 0):
        port = _random.randrange(_LOW, high)
        if port in _given or not _bindable(port) or (gap and not _bindable(port + gap)):
            continue
        _given.add(port)
        return port
    raise RuntimeError("no spare port below the ephemeral range")


def free_port() -> int:
    """A spare port for a private server."""
    return _spare(0)


def free_cluster_port() -> int:
    """A spare port whose cluster bus port (10000 above it) is spare too."""
    return _spare(10000)


def wait_until(check: object, what: str, seconds: float = 30) -> None:
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
            wait_until(client.ping, "redis-server")
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
        wait_until(
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
