"""The real LiteLLM proxy server (its own environment, `make proxy-venv`) with the integration
configured as the README says, in front of a fake OpenAI-compatible provider, driven by the
`openai` SDK; every charge checked against the gateway's prices, once, to the right user, and
the books checked at the end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from loadtests.proxy import MASTER_KEY, FakeProvider, LiteLLMProxy, config
from tests.books import assert_books_balance
from tests.conftest import ADMIN_KEY
from tests.processes import Running, flushed, gateway_process

# The fake provider reports 10 prompt and 20 completion tokens a call: at 1,000 / 2,000
# credits per million that is 0.05 a call; "flaky" is priced 3x so a charge shows which group
# answered.
PRICES: dict[str, dict[str, str]] = {
    "priced": {"input_per_million": "1000", "output_per_million": "2000"},
    "flaky": {"input_per_million": "3000", "output_per_million": "6000"},
    "broken": {"input_per_million": "1000", "output_per_million": "2000"},
    "retried": {"input_per_million": "1000", "output_per_million": "2000"},
    "cachey": {
        "input_per_million": "1000",
        "output_per_million": "2000",
        "cached_input_per_million": "500",
        "reasoning_per_million": "3000",
    },
}
CALL = Decimal("0.05")
HOLD_TTL = 3  # seconds: short, so that a slow stream outlives several holds' lives
ASK = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Stack:
    gateway: Running
    proxy: LiteLLMProxy
    admin: httpx.Client
    provider: FakeProvider

    def openai(self, retries: int = 2) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.proxy.url, api_key=MASTER_KEY, max_retries=retries)

    def balance(self, user: str) -> tuple[Decimal, Decimal]:
        r = self.admin.get("/api/v1/credits/balance", params={"user_id": user})
        assert r.status_code == 200, r.text
        body = r.json()
        return Decimal(body["credits_remaining"]), Decimal(body["credits_held"])

    def spent(self, user: str) -> Decimal:
        """What the user was charged (starting from the default 5.00), every hold settled."""
        for _ in range(100):  # the proxy commits in its success callback, after the reply
            left, held = self.balance(user)
            if held == 0:
                return Decimal(5) - left
            time.sleep(0.1)
        raise AssertionError(f"{user} still holds {held}")

    def ledger(self, user: str) -> list[dict[str, Any]]:
        """The user's ledger in PostgreSQL, once the flusher has moved all of its events."""
        for _ in range(100):
            page = self.admin.get(f"/api/v1/credits/{user}/transactions").json()
            if page["unflushed_events"] == 0:
                rows: list[dict[str, Any]] = page["transactions"]
                return rows
            time.sleep(0.1)
        raise AssertionError(f"{user}'s events were not flushed")

    def counter(self, operation: str, outcome: str) -> float:
        text = self.admin.get("/metrics").text
        line = f'metering_reservations_total{{operation="{operation}",outcome="{outcome}"}}'
        return sum(float(s.split()[-1]) for s in text.splitlines() if s.startswith(line))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    provider = FakeProvider()
    provider.start()
    try:
        with (
            gateway_process() as gw,
            httpx.Client(
                base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            ) as admin,
        ):
            for model, rates in PRICES.items():
                r = admin.put(f"/api/v1/pricing/{model}", json=rates)
                assert r.status_code == 200, r.text
            key = admin.post(  # the README's key for the proxy: debit and read, nothing more
                "/api/v1/admin/keys", json={"name": "litellm-proxy", "scopes": ["debit", "read"]}
            )
            assert key.status_code == 201, key.text
            models = {"priced": "priced", "unpriced": "priced", "broken": "fail"}
            models |= {"cachey": "priced"}
            models |= {"flaky": "fail", "retried": "flaky"}
            proxy = LiteLLMProxy(
                config(
                    provider.url,
                    models,
                    metered=True,
                    fallbacks=[{"flaky": ["priced"]}],
                    num_retries=1,
                ),
                {
                    "METERING_URL": gw.url,
                    "METERING_API_KEY": key.json()["key"],
                    "METERING_HOLD_TTL": str(HOLD_TTL),
                },
            )
            proxy.start()
            try:
                yield Stack(gw, proxy, admin, provider)
            finally:
                proxy.stop()
                assert key.json()["key"] not in proxy.log.read_text()  # never logged
    finally:
        provider.stop()


def test_a_call_is_charged_its_price_once_to_the_requests_user(stack: Stack) -> None:
    reply = stack.openai().chat.completions.create(model="priced", messages=ASK, user="p-alice")
    assert reply.choices[0].message.content == "Hello from upstream"
    assert stack.spent("p-alice") == CALL
    assert stack.balance("default_user_id") == (Decimal(5), 0)  # never the master key's user


def test_cached_and_reasoning_tokens_are_charged_at_their_rates(stack: Stack) -> None:
    """The provider reports 10 prompt tokens of which 6 cached, 20 completion tokens of which
    4 reasoning (OpenAI's usage shape): 4 x 1000 + 6 x 500 + 16 x 2000 + 4 x 3000 = 0.051,
    and the ledger keeps each count."""
    stack.openai().chat.completions.create(model="cachey", messages=ASK, user="p-cache")
    assert stack.spent("p-cache") == Decimal("0.051")
    (row,) = [t for t in stack.ledger("p-cache") if t["type"] == "usage"]
    kinds = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens")
    assert [row[k] for k in kinds] == [4, 6, 20, 4]


def test_a_stream_is_charged_with_the_usage_it_reported_when_it_ends(stack: Stack) -> None:
    stream = stack.openai().chat.completions.create(
        model="priced", messages=ASK, user="p-stream", stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("Hello from upstream")
    assert stack.spent("p-stream") == CALL


def test_concurrent_calls_are_each_charged_once(stack: Stack) -> None:
    """40 calls, 16 at a time, each with max_tokens 100: each holds its estimate (0.208), so
    16 holds fit in 5.00 at once (without max_tokens a call's estimate assumes 4,096 tokens
    and one call holds all the payer has)."""
    client = stack.openai()

    def call(_: int) -> str | None:
        r = client.chat.completions.create(
            model="priced", messages=ASK, user="p-many", max_tokens=100
        )
        return r.choices[0].message.content

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, range(40)))
    assert answers == ["Hello from upstream"] * 40
    assert stack.spent("p-many") == 40 * CALL


def test_a_failing_upstream_charges_nothing_and_releases_the_hold(stack: Stack) -> None:
    with pytest.raises(openai.InternalServerError):
        stack.openai(retries=0).chat.completions.create(
            model="broken", messages=ASK, user="p-broken"
        )
    assert stack.spent("p-broken") == 0


def test_a_fallback_keeps_the_hold_and_charges_the_group_that_answered(stack: Stack) -> None:
    """flaky's deployment fails, the proxy falls back to priced under the same call: the
    failure used to release the hold and the success found none (charged 0)."""
    reply = stack.openai().chat.completions.create(model="flaky", messages=ASK, user="p-fall")
    assert reply.choices[0].message.content == "Hello from upstream"
    assert stack.spent("p-fall") == CALL  # priced's price, not flaky's 0.15


def test_the_proxys_own_retry_is_one_request_charged_once(stack: Stack) -> None:
    """retried's upstream fails every other call: the proxy retries (num_retries 1) inside one
    request, which holds once and is charged once."""
    for _ in range(4):
        stack.openai(retries=0).chat.completions.create(
            model="retried", messages=ASK, user="p-retried"
        )
    assert stack.spent("p-retried") == 4 * CALL


def test_the_same_client_call_id_three_times_is_three_charges(stack: Stack) -> None:
    client = stack.openai()
    same = {"x-litellm-call-id": "chosen-by-the-client"}
    for _ in range(3):
        client.chat.completions.create(
            model="priced", messages=ASK, user="p-same", extra_headers=same, max_tokens=100
        )
    with ThreadPoolExecutor(3) as pool:
        list(
            pool.map(
                lambda _: client.chat.completions.create(
                    model="priced",
                    messages=ASK,
                    user="p-same",
                    extra_headers=same,
                    max_tokens=100,
                ),
                range(3),
            )
        )
    assert stack.spent("p-same") == 6 * CALL


def test_refusals_are_400_with_the_gateways_reason_and_not_retried(stack: Stack) -> None:
    r = stack.admin.post(
        "/api/v1/credits/debit",
        json={"user_id": "p-broke", "amount": "5", "request_id": "p-broke-1"},
    )
    assert r.status_code == 200, r.text
    before = stack.counter("reserve", "insufficient_credits")
    client = stack.openai()  # the SDK's default: 2 retries, for 5xx and 429, never a 400
    ask = [{"role": "user", "content": "p-broke asks"}]
    with pytest.raises(openai.BadRequestError, match="insufficient_credits"):
        client.chat.completions.create(model="priced", messages=ask, user="p-broke")
    assert stack.counter("reserve", "insufficient_credits") == before + 1  # asked once
    with pytest.raises(openai.BadRequestError, match="insufficient_credits"):  # with a fallback
        client.chat.completions.create(model="flaky", messages=ask, user="p-broke")
    with pytest.raises(openai.BadRequestError, match="no price"):
        client.chat.completions.create(model="unpriced", messages=ask, user="p-broke")
    with pytest.raises(openai.BadRequestError, match="no one to charge"):
        client.chat.completions.create(model="priced", messages=ask)
    assert stack.balance("p-broke") == (Decimal(0), 0)
    assert stack.provider.calls("p-broke asks") == 0  # every refusal came before the model call


def test_a_payer_short_of_the_estimate_gets_an_answer_cut_to_what_they_have(
    stack: Stack,
) -> None:
    """0.02 left and no max_tokens (an estimate of 8.20): the call holds the 0.02 and asks for
    no more tokens than that pays for, so it is charged at most the 0.02 the payer had."""
    r = stack.admin.post(
        "/api/v1/credits/debit",
        json={"user_id": "p-short", "amount": "4.98", "request_id": "p-short-1"},
    )
    assert r.status_code == 200, r.text
    reply = stack.openai().chat.completions.create(model="priced", messages=ASK, user="p-short")
    assert reply.usage is not None and reply.usage.completion_tokens < 20  # cut short
    assert stack.spent("p-short") == Decimal("5")  # all of the 0.02, never more


def test_a_stream_longer_than_its_hold_is_charged_by_its_commit(stack: Stack) -> None:
    """A 7 s stream with holds of 3 s: the handler extends the hold while the stream runs, so
    the commit finds it (a fixed 300 s hold used to expire under long calls: 409, free)."""
    extended = stack.counter("extend", "ok")
    stream = stack.openai().chat.completions.create(
        model="priced",
        messages=[{"role": "user", "content": "slow 8 1"}],
        user="p-long",
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    assert len(chunks) >= 8
    assert stack.spent("p-long") == CALL
    assert stack.counter("extend", "ok") >= extended + 2
    charged = [t for t in stack.ledger("p-long") if t["type"] == "usage"]
    assert len(charged) == 1 and not charged[0]["request_id"].endswith("-late")


def test_an_unreachable_gateway_refuses_with_503_before_the_model_call(stack: Stack) -> None:
    """A proxy whose gateway dies after the price list was read (the reserve itself fails):
    503 with the reason, no model call; the call made before is charged, the books balance."""
    with (
        gateway_process() as gw,
        httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin,
    ):
        assert admin.put("/api/v1/pricing/priced", json=PRICES["priced"]).status_code == 200
        key = admin.post("/api/v1/admin/keys", json={"name": "down", "scopes": ["debit", "read"]})
        proxy = LiteLLMProxy(
            config(stack.provider.url, {"priced": "priced"}, metered=True, num_retries=1),
            {"METERING_URL": gw.url, "METERING_API_KEY": key.json()["key"]},
        )
        proxy.start()
        try:
            client = openai.OpenAI(base_url=proxy.url, api_key=MASTER_KEY, max_retries=0)
            first = [{"role": "user", "content": "p-down asks"}]
            client.chat.completions.create(model="priced", messages=first, user="p-down")
            gw.process.kill()
            later = [{"role": "user", "content": "p-down asks again"}]
            with pytest.raises(openai.APIStatusError, match="metering is unavailable") as down:
                client.chat.completions.create(model="priced", messages=later, user="p-down")
            assert down.value.status_code == 503
            assert stack.provider.calls("p-down asks") == 1
            assert stack.provider.calls("p-down asks again") == 0
        finally:
            proxy.stop()

        async def check() -> None:
            async with flushed(gw) as (pool, redis, keys):
                assert await assert_books_balance(pool, redis, keys) >= 1

        asyncio.run(check())


def test_zz_books_balance_after_everything(stack: Stack) -> None:
    async def check() -> None:
        async with flushed(stack.gateway) as (pool, redis, keys):
            assert await assert_books_balance(pool, redis, keys) >= 10

    asyncio.run(check())
