"""What metering adds to a proxied LLM call, measured: the real LiteLLM proxy five times,
without any callback, with a callback that does nothing (what LiteLLM spends on running one),
with the metering callback over each of the client's HTTP stacks (aiohttp, httpx), and with
its reserve awaited in the pre-call hook instead of overlapping the proxy's work, in
front of the same fake provider, one call at a time, the proxies taking turns so that
all see the same machine.

    python -m loadtests.proxy_latency [--calls 200] [--no-stream] [--pin]

Starts a private Redis and PostgreSQL, `metering serve`, the fake provider
(loadtests/fake_provider.py) and the proxies (`make proxy-venv` builds their environment).
Prints p50/p95/p99 of each and the difference, for plain calls and for streams (time to the
last chunk). The metered proxy's calls all go to users the gateway knows (one warm-up call
each first), as in steady state. Nothing is asserted: it measures and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import httpx

from loadtests.proxy import MASTER_KEY, NOOP_CALLBACK, FakeProvider, LiteLLMProxy, config
from loadtests.servers import GatewayProcess, PrivatePostgres, PrivateRedis
from persistence.migrate import prepare

ADMIN = "latency-admin-key-0123456789abcdef0123"
MODEL = "priced"
USERS = 50  # 5.00 each: enough for every metered proxy's calls at 0.05


def _call(client: httpx.Client, user: str, stream: bool) -> float:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "user": user,
        "max_tokens": 100,
        "stream": stream,
    }
    started = time.perf_counter()
    if stream:
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            for _ in r.iter_bytes():
                pass
    else:
        r = client.post("/v1/chat/completions", json=body)
    took = time.perf_counter() - started
    if r.status_code != 200:
        raise RuntimeError(f"{r.status_code}: {r.read()[:300]!r}")
    return took * 1000


def _quantiles(ms: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return q[49], q[94], q[98]


def measure(proxies: dict[str, str], calls: int, stream: bool) -> None:
    """proxies: name -> URL, the first without metering; each call goes to every proxy in
    turn, the order rotating, so that all see the same machine."""
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    clients = {
        name: httpx.Client(base_url=url, headers=headers, timeout=30)
        for name, url in proxies.items()
    }
    times: dict[str, list[float]] = {name: [] for name in proxies}
    try:
        for i in range(USERS):  # warm-up: connections, and every user known to the gateway
            for client in clients.values():
                _call(client, f"lat-{i}", stream)
        names = list(clients)
        for i in range(calls):
            user = f"lat-{i % USERS}"
            for name in names[i % len(names) :] + names[: i % len(names)]:
                times[name].append(_call(clients[name], user, stream))
    finally:
        for client in clients.values():
            client.close()
    kind = "streams (to the last chunk)" if stream else "plain calls"
    print(f"\n{calls} {kind}, one at a time, the proxies taking turns:")
    print(f"{'':34}{'p50':>9}{'p95':>9}{'p99':>9}   (ms)")
    rows = {name: _quantiles(ms) for name, ms in times.items()}
    base = rows[names[0]]
    for name, (p50, p95, p99) in rows.items():
        print(f"{name:34}{p50:9.2f}{p95:9.2f}{p99:9.2f}")
    for name in names[1:]:
        added = [w - o for w, o in zip(rows[name], base, strict=True)]
        print(f"{'added: ' + name:34}{added[0]:9.2f}{added[1]:9.2f}{added[2]:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.proxy_latency", description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--no-stream", action="store_true", help="plain calls only")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the gateway, Redis and PostgreSQL on the last CPU, the proxies, the provider and "
        "this client on the others (as if the gateway had a host of its own)",
    )
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin:  # processes keep the affinity of the process that started them
        os.sched_setaffinity(0, cpus[-1:])
    pg, rd = PrivatePostgres(), PrivateRedis()
    pg.start()
    rd.start()
    database = f"{pg.server}/latency"
    asyncio.run(prepare(database))
    servers = []
    try:
        gateway = GatewayProcess(
            {
                "METERING_DATABASE_URL": database,
                "METERING_REDIS_URL": rd.url,
                "METERING_ADMIN_KEY": ADMIN,
                "METERING_RENEW_CRON": "off",
            }
        )
        gateway.start()
        servers.append(gateway)
        if args.pin:
            os.sched_setaffinity(0, cpus[:-1])
        provider = FakeProvider()
        provider.start()
        servers.append(provider)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        r = httpx.put(
            f"{gateway.url}/api/v1/pricing/{MODEL}",
            json={"input_per_million": "1000", "output_per_million": "2000"},
            headers=admin,
        )
        r.raise_for_status()
        models = {MODEL: "priced"}
        env = {"METERING_URL": gateway.url, "METERING_API_KEY": ADMIN}
        root = str(Path(__file__).resolve().parent.parent)
        proxies = {
            "without metering": LiteLLMProxy(config(provider.url, models, metered=False), {}),
            "a callback doing nothing": LiteLLMProxy(
                config(provider.url, models, metered=NOOP_CALLBACK), {"PYTHONPATH": root}
            ),
            "metered (aiohttp, the default)": LiteLLMProxy(
                config(provider.url, models, metered=True), {**env, "METERING_HTTP": "aiohttp"}
            ),
            "metered (httpx)": LiteLLMProxy(
                config(provider.url, models, metered=True), {**env, "METERING_HTTP": "httpx"}
            ),
            "metered, reserve not overlapped": LiteLLMProxy(
                config(provider.url, models, metered=True),
                {**env, "METERING_HTTP": "aiohttp", "METERING_OVERLAP": "0"},
            ),
        }
        for server in proxies.values():
            server.start()
            servers.append(server)
        urls = {name: proxy.url for name, proxy in proxies.items()}
        measure(urls, args.calls, stream=False)
        if not args.no_stream:
            measure(urls, args.calls, stream=True)
    finally:
        for server in reversed(servers):
            server.stop()
        rd.close()
        pg.close()


if __name__ == "__main__":
    main()
