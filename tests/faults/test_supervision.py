"""A flusher that cannot stay dead, and a serve that starts while PostgreSQL is down.

Before: serve started its flusher process once; SIGKILLed (or dead at start-up because
PostgreSQL was down) it stayed dead, debits kept getting 200, nothing reached PostgreSQL, and
/health/ready said only "behind". Now serve restarts it with backoff, health says "down" while
none runs, /metrics counts restarts and shows the flusher's own counters, and every
acknowledged debit reaches the ledger exactly once through the gateway's own flusher."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtests.servers import GatewayProcess
from tests.faults.harness import Load
from tests.faults.test_faults import ADMIN, Stack, warm_users

pytestmark = pytest.mark.faults


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack(flush_interval="0.3")
    yield s
    s.close()


def flusher_pids(serve_pid: int) -> list[int]:
    """The `metering flusher` processes started by this serve."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"flusher" in cmd and str(serve_pid).encode() in cmd:
            found.append(int(proc.name))
    return found


def flusher(url: str) -> dict[str, object]:
    """The flusher section of /health/ready."""
    return dict(httpx.get(f"{url}/health/ready", timeout=5).json()["flusher"])


def wait_until(check: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} within {seconds} s")


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics/", headers={"Authorization": f"Bearer {ADMIN}"}).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def drained_by_the_gateway(url: str) -> None:
    """The gateway's own flusher (not the books check's) brings the backlog to 0."""

    def empty() -> bool:
        state = flusher(url)
        return bool(state["backlog"] == 0 and state["running"])

    wait_until(empty, 40, "the gateway's flusher did not drain the backlog")


@pytest.mark.parametrize("postgres", ["up", "down"])
def test_a_killed_flusher_is_restarted_and_every_debit_arrives(stack: Stack, postgres: str) -> None:
    serve = stack.gateway.proc
    assert serve is not None
    wait_until(lambda: flusher_pids(serve.pid), 20, "no flusher process")
    (first,) = flusher_pids(serve.pid)
    key = stack.debit_key()
    load = Load(stack.gateway.url, key, warm_users(stack, key), threads=4).start()
    time.sleep(1)
    if postgres == "down":
        stack.pg.stop("fast")
    os.kill(first, signal.SIGKILL)
    wait_until(
        lambda: [p for p in flusher_pids(serve.pid) if p != first], 10, "no flusher restarted"
    )
    # while PostgreSQL is down the new flusher is up (it connects when it can) and says so
    wait_until(lambda: flusher(stack.gateway.url)["running"] == 1, 10, "no beat")
    if postgres == "down":
        time.sleep(3)
        stack.pg.start()
    time.sleep(1)
    debits = load.stop()
    assert sum(d.final == 200 for d in debits) > 50
    drained_by_the_gateway(stack.gateway.url)
    assert metric(stack.gateway.url, "metering_flusher_restarts_total") >= 1
    assert metric(stack.gateway.url, "metering_flushed_events_total") > 0
    assert "the flusher process died" in stack.gateway.log.read_text()
    stack.books(debits).assert_straight()


def test_health_says_when_no_flusher_runs(stack: Stack) -> None:
    serve = stack.gateway.proc
    assert serve is not None
    wait_until(lambda: flusher(stack.gateway.url)["running"] == 1, 20, "no beat")
    for pid in flusher_pids(serve.pid):
        os.kill(pid, signal.SIGSTOP)  # hung: alive, but not beating
    try:
        wait_until(
            lambda: flusher(stack.gateway.url)["status"] == "down",
            10,
            "health did not say 'down'",
        )
        assert metric(stack.gateway.url, "metering_flushers_running") == 0
    finally:
        for pid in flusher_pids(serve.pid):
            os.kill(pid, signal.SIGCONT)


def test_serve_starts_while_postgres_is_down(stack: Stack) -> None:
    """A restart during an outage: the schema is known current (Redis says so), so serve
    starts and serves the users Redis holds; new users get 503 until PostgreSQL is back. A
    gateway that cannot know the schema waits for PostgreSQL, saying so, and then starts."""
    key = stack.debit_key()
    users = warm_users(stack, key, 3)
    stack.gateway.stop()
    stack.pg.stop("fast")
    stack.gateway.start()
    load = Load(stack.gateway.url, key, users, threads=2).start()
    time.sleep(1.5)
    cold = httpx.post(
        f"{stack.gateway.url}/api/v1/credits/debit",
        headers={"Authorization": f"Bearer {key}"},
        json={"user_id": "cold", "amount": "1", "request_id": "c"},
    )
    assert cold.status_code == 503 and "PostgreSQL" in cold.json()["detail"]
    assert "schema is known current" in stack.gateway.log.read_text()

    fresh = GatewayProcess({**_env(stack), "METERING_KEY_PREFIX": "fresh"})
    waiting = _start_in_background(fresh)
    time.sleep(3)
    assert "waiting for it" in fresh.log.read_text()
    stack.pg.start()
    waiting.join(timeout=30)
    assert httpx.get(f"{fresh.url}/health/live").status_code == 200
    fresh.stop()
    time.sleep(1)
    debits = load.stop()
    during = [d for d in debits if d.first == 200]
    assert len(during) > 10
    drained_by_the_gateway(stack.gateway.url)
    stack.books(debits).assert_straight()


def _env(stack: Stack) -> dict[str, str]:
    return {k: v for k, v in stack.gateway.env.items() if k.startswith("METERING_")}


def _start_in_background(process: GatewayProcess) -> threading.Thread:
    thread = threading.Thread(target=process.start, daemon=True)
    thread.start()
    return thread
