"""metering_client.litellm (clients/python) against a running gateway (`metering serve`), with
LiteLLM's mock responses (no provider is called): reserve, commit the priced usage, release on
failure, refusals before any call; the SDK wrapper and the proxy callback."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from decimal import Decimal
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import REGISTRY

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch from the internet
litellm = pytest.importorskip("litellm")

from metering_client import InsufficientCreditsError, MeteringClient  # noqa: E402
from metering_client.litellm import (  # noqa: E402
    MeteringProxyHandler,
    MeteringRefused,
    metered_completion,
)
from tests.conftest import ADMIN_KEY  # noqa: E402
from tests.processes import Running, gateway_process  # noqa: E402

MODEL = "gpt-4o-mini"
ASK = [{"role": "user", "content": "hi"}]  # LiteLLM's mock answers 10 prompt + 20 output tokens


@pytest.fixture(scope="module")
def gw() -> Iterator[Running]:
    with gateway_process() as running:
        r = httpx.put(  # 1,000 and 2,000 credits per million tokens: 0.05 per mocked call
            f"{running.url}/api/v1/pricing/{MODEL}",
            json={"input_per_million": "1000", "output_per_million": "2000"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert r.status_code == 200, r.text
        yield running


async def admitted(
    handler: MeteringProxyHandler, key: object, data: dict[str, object]
) -> dict[str, object]:
    """What the proxy does with a chat completion before it calls the provider: the pre-call
    hook (which starts the reserve), then LiteLLM's deployment hook (which waits for it)."""
    data = await handler.async_pre_call_hook(key, None, data, "completion")
    await handler.async_pre_call_deployment_hook(data, None)
    return data


async def remaining(m: MeteringClient, user: str) -> Decimal:
    b = await m.balance(user)
    assert b.credits_held == "0.000000"  # every hold settled
    return Decimal(b.credits_remaining)


async def test_a_call_is_charged_its_priced_usage(gw: Running) -> None:
    async with MeteringClient(gw.url, ADMIN_KEY) as m:
        reply = await metered_completion(
            m, "llm-a", "0.50", model=MODEL, messages=ASK, mock_response="Hello there"
        )
        assert reply.choices[0].message.content == "Hello there"
        assert await remaining(m, "llm-a") == Decimal("4.95")


async def test_a_failed_call_releases_its_hold(gw: Running) -> None:
    async with MeteringClient(gw.url, ADMIN_KEY) as m:
        with pytest.raises(litellm.exceptions.InternalServerError):
            await metered_completion(
                m, "llm-b", "0.50", model=MODEL, messages=ASK, mock_response=Exception("boom")
            )
        assert await remaining(m, "llm-b") == Decimal("5")


async def test_out_of_credits_refuses_before_the_call(gw: Running) -> None:
    async with MeteringClient(gw.url, ADMIN_KEY) as m:
        with pytest.raises(InsufficientCreditsError):
            await metered_completion(
                m, "llm-c", "10", model=MODEL, messages=ASK, mock_response="never sent"
            )
        assert await remaining(m, "llm-c") == Decimal("5")


async def settled(handler: MeteringProxyHandler) -> None:
    for _ in range(100):  # LiteLLM runs its success and failure callbacks in the background
        if not handler.holds and not handler.settling:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"holds left: {handler.holds}")


async def test_the_proxy_callback_reserves_commits_and_releases(gw: Running) -> None:
    async with MeteringClient(gw.url, ADMIN_KEY) as m:
        handler = MeteringProxyHandler(m, "0.50")
        litellm.callbacks = [handler]
        try:
            key = SimpleNamespace(end_user_id="llm-proxy")  # as the proxy's UserAPIKeyAuth
            data = await admitted(handler, key, {"model": MODEL})
            assert (await m.balance("llm-proxy")).credits_held == "0.500000"
            await litellm.acompletion(
                model=MODEL,
                messages=ASK,
                mock_response="ok",
                metadata=data["metadata"],
            )
            await settled(handler)
            assert await remaining(m, "llm-proxy") == Decimal("4.95")

            data = await admitted(handler, key, {"model": MODEL})
            with pytest.raises(litellm.exceptions.InternalServerError) as failed:
                await litellm.acompletion(
                    model=MODEL,
                    messages=ASK,
                    mock_response=Exception("provider down"),
                    metadata=data["metadata"],
                )
            await asyncio.sleep(0.2)  # the deployment's failure: the proxy may still fall back
            assert (await m.balance("llm-proxy")).credits_held == "0.500000"
            await handler.async_post_call_failure_hook(data, failed.value, key)  # request over
            await settled(handler)
            assert await remaining(m, "llm-proxy") == Decimal("4.95")  # released, not charged

            # 100 credits asked of 4.95: the reserve starts in the pre-call hook and LiteLLM's
            # own deployment hook refuses the call before the provider is called
            litellm.callbacks = [broke := MeteringProxyHandler(m, "100")]
            data = await broke.async_pre_call_hook(key, None, {"model": MODEL}, "completion")
            with pytest.raises(MeteringRefused, match="insufficient_credits"):
                await litellm.acompletion(
                    model=MODEL, messages=ASK, mock_response="ok", metadata=data["metadata"]
                )
            await broke.async_post_call_failure_hook(data, RuntimeError(), key)
            assert not broke.holds and await remaining(m, "llm-proxy") == Decimal("4.95")
            # other call types (embeddings, ...) wait for their reserve in the pre-call hook
            with pytest.raises(MeteringRefused, match="insufficient_credits"):
                await broke.async_pre_call_hook(key, None, {"model": MODEL}, "embeddings")
        finally:
            # LiteLLM copies callbacks into lists of its own on first use: clear those too
            litellm.logging_callback_manager._reset_all_callbacks()


def test_who_pays_follows_the_configured_rule_never_a_placeholder() -> None:
    """METERING_PAYER: the request's end user / user by default (behind the master key the
    key's user_id is the shared 'default_user_id'); a header or key/team metadata when
    configured; None when no source names anyone."""
    from metering_client.litellm import check_payer_rule, payer_of

    master = SimpleNamespace(
        user_id="default_user_id",
        end_user_id=None,
        metadata={},
        team_metadata={"billing": "team-7"},
    )
    body = {"user": "alice", "proxy_server_request": {"headers": {"X-Payer": "bob"}}}
    assert payer_of("end_user,user", master, body) == "alice"
    assert payer_of("end_user,user", SimpleNamespace(end_user_id="carol"), body) == "carol"
    assert payer_of("end_user,user", master, {}) is None  # never default_user_id
    assert payer_of("header:x-payer,user", master, body) == "bob"
    assert payer_of("team_metadata:billing", master, body) == "team-7"
    assert payer_of("key_metadata:billing,key_user", master, {}) == "default_user_id"
    for bad in ("", "nobody", "header", "user:x", "end_user,,user"):
        with pytest.raises(ValueError, match="METERING_PAYER"):
            check_payer_rule(bad)


async def test_the_same_client_call_id_three_times_is_three_charges(gw: Running) -> None:
    """A client-sent call id (x-litellm-call-id) sent with three calls at once: each call gets
    its own hold and commit, so three calls are three charges (it was one)."""
    async with MeteringClient(gw.url, ADMIN_KEY) as m:
        handler = MeteringProxyHandler(m, "0.50")
        litellm.callbacks = [handler]
        try:
            key = SimpleNamespace(user_id="default_user_id", end_user_id="same-id-user")
            datas = [
                await admitted(handler, key, {"model": MODEL, "litellm_call_id": "client-chosen"})
                for _ in range(3)
            ]
            assert len({d["metadata"]["metering_hold"] for d in datas}) == 3
            await asyncio.gather(
                *(
                    litellm.acompletion(
                        model=MODEL,
                        messages=ASK,
                        mock_response="ok",
                        litellm_call_id="client-chosen",
                        metadata=d["metadata"],
                    )
                    for d in datas
                )
            )
            await settled(handler)
            assert await remaining(m, "same-id-user") == Decimal("4.85")  # 3 x 0.05
        finally:
            # LiteLLM copies callbacks into lists of its own on first use: clear those too
            litellm.logging_callback_manager._reset_all_callbacks()


async def test_each_hold_is_the_calls_estimate_and_an_unpriced_model_is_refused(
    gw: Running,
) -> None:
    """The hold is the call's top cost at the gateway's prices (8 prompt tokens and max_tokens
    100 at 1,000/2,000 per million: 0.208), so a user with 0.30 can still make the call (a
    flat 0.50 refused it); without max_tokens 4096 output tokens are assumed (8.20), and a
    payer with less holds what they have, down to the floor; a model with no gateway price is
    refused before anything is held or called."""
    async with MeteringClient(gw.url, ADMIN_KEY) as m:
        await m.debit("sizer", "4.7")  # 0.30 left
        handler = MeteringProxyHandler(m)
        key = SimpleNamespace(end_user_id="sizer")
        small = {"model": MODEL, "messages": ASK, "max_tokens": 100}
        await admitted(handler, key, small)
        assert (await m.balance("sizer")).credits_held == "0.208000"
        await handler.holds.popitem()[1].hold.release()
        open_ended = {"model": MODEL, "messages": ASK}
        assert await handler.hold_for(open_ended) == "8.200000"
        await admitted(handler, key, open_ended)
        assert (await m.balance("sizer")).credits_held == "0.300000"  # all there is, not 8.20
        await handler.holds.popitem()[1].hold.release()
        await m.debit("sizer", "0.295")  # 0.005 left: under the floor of 0.01
        with pytest.raises(MeteringRefused, match="insufficient_credits"):
            await admitted(handler, key, open_ended)
        with pytest.raises(MeteringRefused, match="no price"):
            await admitted(handler, key, {"model": "unpriced-model", "messages": ASK})
        assert await remaining(m, "sizer") == Decimal("0.005")


async def test_a_stream_is_charged_when_it_ends_with_the_usage_it_reported(gw: Running) -> None:
    """metered_completion(stream=True) used to settle at once on the stream object and book
    usage 0.000000. Now the hold settles when the stream ends, with the stream's own usage (8
    prompt + 3 output tokens of the mock: 0.014); a stream closed early is charged for the
    prompt and the text received, never 0."""
    async with MeteringClient(gw.url, ADMIN_KEY) as m:
        stream = await metered_completion(
            m,
            "streamer",
            "0.50",
            model=MODEL,
            messages=ASK,
            stream=True,
            mock_response="Hello there friend",
        )
        assert (await m.balance("streamer")).credits_held == "0.500000"  # open while streaming
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Hello there friend"
        assert await remaining(m, "streamer") == Decimal("4.986")
        early = await metered_completion(
            m,
            "quitter",
            "0.50",
            model=MODEL,
            messages=ASK,
            stream=True,
            mock_response="Hello there friend",
        )
        async for _ in early:
            break  # the client stops reading after the first chunk
        await early.aclose()
        left = await remaining(m, "quitter")
        assert Decimal("4.98") < left < 5  # the prompt and the first chunk, charged


def refusals(reason: str) -> float:
    value = REGISTRY.get_sample_value("metering_proxy_refusals_total", {"reason": reason})
    return value or 0.0


async def test_refusals_are_400_and_an_unreachable_gateway_fails_closed_with_503(
    gw: Running,
) -> None:
    """What the proxy's client gets: 400 with the gateway's message for a refusal (no payer, no
    credits), which the OpenAI SDK does not retry (it was a 500, retried twice); 503 when the
    gateway cannot be reached, unless fail_open lets the call through unmetered."""
    async with MeteringClient(gw.url, ADMIN_KEY) as m:
        handler = MeteringProxyHandler(m, "100")
        key = SimpleNamespace(end_user_id="refused")
        with pytest.raises(MeteringRefused) as broke:
            await admitted(handler, key, {"model": MODEL})
        assert broke.value.status_code == 400 and "insufficient_credits" in broke.value.detail
        before = refusals("no_payer")
        with pytest.raises(MeteringRefused) as nobody:
            await admitted(handler, SimpleNamespace(), {"model": MODEL})
        assert nobody.value.status_code == 400 and "no one to charge" in nobody.value.detail
        assert refusals("no_payer") == before + 1
    async with MeteringClient("http://127.0.0.1:9", ADMIN_KEY, retries=0) as down:
        closed = MeteringProxyHandler(down, "0.50")
        with pytest.raises(MeteringRefused) as unavailable:
            await admitted(closed, key, {"model": MODEL})
        assert unavailable.value.status_code == 503
        opened = MeteringProxyHandler(down, "0.50", fail_open=True)
        data = await admitted(opened, key, {"model": MODEL})
        assert data["model"] == MODEL and not opened.holds  # let through, unmetered


async def test_a_commit_that_fails_after_its_retries_is_logged_and_counted(
    gw: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway stops answering between the reply and the commit: the client retries, then
    the handler logs the reservation and counts it (LiteLLM would only log a LoggingError);
    nothing escapes into the proxy."""
    async with (
        MeteringClient(gw.url, ADMIN_KEY) as m,
        MeteringClient("http://127.0.0.1:9", ADMIN_KEY, retries=1) as down,
    ):
        handler = MeteringProxyHandler(m, "0.50")
        key = SimpleNamespace(end_user_id="lost-commit")
        data = await admitted(handler, key, {"model": MODEL})
        hold = handler.holds[data["metadata"]["metering_hold"]].hold
        hold.client = down  # the gateway is gone when the call ends
        reply = SimpleNamespace(
            model=MODEL, usage=SimpleNamespace(prompt_tokens=1, completion_tokens=1)
        )
        with caplog.at_level("ERROR", logger="metering.litellm"):
            await handler.async_log_success_event(
                {"litellm_params": {"metadata": data["metadata"]}, "model": MODEL},
                reply,
                None,
                None,
            )
        assert handler.failed_settlements == 1 and not handler.holds
        failures = REGISTRY.get_sample_value("metering_proxy_settlement_failures_total")
        assert failures is not None and failures >= 1  # on the proxy's /metrics too
        assert hold.reservation is not None
        assert hold.reservation.reservation_id in caplog.text
        hold.client = m
        await hold.release()  # tidy: the hold would expire by itself
        assert await remaining(m, "lost-commit") == Decimal("5")


def test_provider_usage_shapes_become_the_gateways_token_counts() -> None:
    """LiteLLM's usage, for OpenAI (prompt_tokens_details.cached_tokens) and Anthropic
    (cache_read_input_tokens, cache_creation_input_tokens; LiteLLM counts both in
    prompt_tokens): input_tokens is the prompt less what was read from and written to the
    cache; reasoning stays inside output_tokens."""
    from metering_client.litellm.completion import usage_counts

    anthropic = litellm.Usage(
        prompt_tokens=100,
        completion_tokens=50,
        cache_read_input_tokens=30,
        cache_creation_input_tokens=20,
        completion_tokens_details={"reasoning_tokens": 10},
    )
    assert usage_counts(anthropic) == {
        "input_tokens": 50,
        "output_tokens": 50,
        "cached_input_tokens": 30,
        "cache_write_tokens": 20,
        "reasoning_tokens": 10,
    }
    openai_like = litellm.Usage(
        prompt_tokens=100, completion_tokens=50, prompt_tokens_details={"cached_tokens": 64}
    )
    assert usage_counts(openai_like) == {
        "input_tokens": 36,
        "output_tokens": 50,
        "cached_input_tokens": 64,
    }
    assert usage_counts(None) == {"input_tokens": 0, "output_tokens": 0}


async def test_a_commit_after_expiry_is_a_debit_but_never_a_second_charge(gw: Running) -> None:
    """The success comes after the hold expired (1 s): charged once, by a debit of the same
    usage. A hold already committed answers 409 'already committed': the handler does not
    charge the call again (it counts a failed settlement instead)."""
    async with MeteringClient(gw.url, ADMIN_KEY) as m:
        handler = MeteringProxyHandler(m, "0.50", ttl_seconds=1)
        key = SimpleNamespace(end_user_id="late-commit")
        reply = SimpleNamespace(usage=SimpleNamespace(prompt_tokens=10, completion_tokens=20))
        data = await admitted(handler, key, {"model": MODEL})
        assert handler._keeper is not None
        handler._keeper.cancel()  # as if the gateway had not answered its extends
        await asyncio.sleep(1.5)
        logged = {"litellm_params": {"metadata": data["metadata"]}, "model": MODEL}
        await handler.async_log_success_event(logged, reply, None, None)
        assert handler.late_commits == 1 and handler.failed_settlements == 0
        assert await remaining(m, "late-commit") == Decimal("4.95")
        data = await admitted(handler, key, {"model": MODEL})
        hold = handler.holds[data["metadata"]["metering_hold"]].hold
        await hold.commit("0.01")  # committed elsewhere already, for another amount
        logged = {"litellm_params": {"metadata": data["metadata"]}, "model": MODEL}
        await handler.async_log_success_event(logged, reply, None, None)
        assert handler.late_commits == 1 and handler.failed_settlements == 1
        assert await remaining(m, "late-commit") == Decimal("4.94")  # 0.05 + 0.01, no more
