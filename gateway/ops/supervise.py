"""`metering serve` keeps its flusher process alive: whenever it exits (killed, out of memory, a
bug, PostgreSQL unreachable at a bad moment) it is started again, after a pause that doubles
from 1 s up to 30 s while it keeps dying and falls back to 1 s once it has run for a minute.
Each restart is logged and counted (metering_flusher_restarts_total); /health/ready and
metering_flushers_running tell whether any flusher is beating meanwhile."""

from __future__ import annotations

import logging
import subprocess
import threading
import time

from gateway.base.metrics import FLUSHER_RESTARTS

log = logging.getLogger("metering.supervise")


class Supervisor:
    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        min_backoff: float = 1.0,
        max_backoff: float = 30.0,
        healthy_after: float = 60.0,
    ) -> None:
        self.argv, self.env = argv, env  # the environment for every start, as it was given
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.healthy_after = healthy_after
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="flusher-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def pid(self) -> int | None:
        with self._lock:
            return None if self._child is None else self._child.pid

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self._stop.is_set():
                return None
            self._child = subprocess.Popen(self.argv, env=self.env)  # noqa: S603 (ours)
            return self._child

    def _run(self) -> None:
        delay = self.min_backoff
        while True:
            child = self._spawn()
            if child is None:
                return
            started = time.monotonic()
            code = child.wait()
            if self._stop.is_set():
                return
            ran = time.monotonic() - started
            delay = self.min_backoff if ran >= self.healthy_after else delay
            if code == 0:  # asked to stop (SIGTERM): most often serve itself is stopping
                log.warning("the flusher process stopped; starting it again in %.1f s", delay)
            else:
                self.restarts += 1
                FLUSHER_RESTARTS.inc()
                log.error(
                    "the flusher process died (exit code %s) after %.1f s; restart %d in %.1f s",
                    code,
                    ran,
                    self.restarts,
                    delay,
                )
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.max_backoff)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop restarting; the flusher flushes what is pending and exits (killed after
        timeout seconds)."""
        with self._lock:
            self._stop.set()
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.kill()
        self._thread.join(timeout=5)
