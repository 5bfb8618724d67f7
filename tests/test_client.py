"""metering_client against the real app: typed results, retries with the same request_id,
reserve() as an async context manager that commits or releases."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from metering_client import InsufficientCreditsError, MeteringAPIError, MeteringClient
from metering_client.http import GatewayUnreachable, HttpKind
from tests.conftest import ADMIN_KEY, Client
from tests.processes import gateway_process


class LosesFirstAnswer(httpx.AsyncBaseTransport):
    """Delivers each request, but the first answer is lost (as a timeout would)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        response = await self.inner.handle_async_request(request)
        if self.calls == 1:
            await response.aread()
            raise httpx.ReadTimeout("answer lost", request=request)
        return response


def sdk(client: Client, transport: httpx.AsyncBaseTransport | None = None) -> MeteringClient:
    return MeteringClient(
        "http://gateway", ADMIN_KEY, transport=transport or httpx.ASGITransport(app=client.app)
    )


async def test_debit_balance_and_typed_errors(client: Client) -> None:
    async with sdk(client) as m:
        done = await m.debit("sdk-user", "1.25", model="gpt-4o")
        assert done.charged == "1.250000" and done.credits_remaining == "3.750000"
        assert (await m.balance("sdk-user")).credits_remaining == "3.750000"
        blocks = (await m.grants("sdk-user", include_closed=True)).grants
        assert [(b.kind, b.remaining, b.status) for b in blocks] == [
            ("allocation", "3.750000", "open")
        ]
        with pytest.raises(InsufficientCreditsError) as short:
            await m.debit("sdk-user", "10")
        assert short.value.reason == "insufficient_credits"
        assert short.value.credits_remaining == Decimal("3.75")
        with pytest.raises(MeteringAPIError) as bad:
            await m.debit("sdk-user", "-1")
        assert bad.value.status == 400
        # Decimals whose str() has an exponent are sent in the gateway's grammar
        assert (await m.debit("sdk-user", Decimal("1E-6"))).charged == "0.000001"
        assert (await m.debit("sdk-user", Decimal("1E+0") * 2)).charged == "2.000000"
        assert (await m.debit("sdk-user", Decimal("0.1E+1"))).charged == "1.000000"


async def test_a_lost_answer_is_retried_with_the_same_request_id(client: Client) -> None:
    flaky = LosesFirstAnswer(httpx.ASGITransport(app=client.app))
    async with sdk(client, flaky) as m:
        done = await m.debit("retry-user", "2", request_id="call-1")
    assert flaky.calls == 2 and done.replayed is True  # applied once, answered on the retry
    bal = await client.get("/api/v1/credits/balance", params={"user_id": "retry-user"})
    assert bal.json()["credits_remaining"] == "3.000000"


async def test_reserve_commits_or_releases(client: Client) -> None:
    async with sdk(client) as m:
        async with m.reserve("hold-user", "2") as hold:
            assert hold.reservation is not None and hold.reservation.held == "2.000000"
            done = await hold.commit("0.5")
        assert done.charged == "0.500000" and done.released == "1.500000"
        with pytest.raises(RuntimeError):
            async with m.reserve("hold-user", "1"):
                raise RuntimeError("the model call failed")
        async with m.reserve("hold-user", "1"):
            pass  # never committed: released on exit
        bal = await m.balance("hold-user")
    assert bal.credits_remaining == "4.500000" and bal.credits_held == "0.000000"


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    with gateway_process() as running:
        yield running.url


@pytest.mark.parametrize("http", ["aiohttp", "httpx"])
async def test_both_http_stacks_over_a_real_socket(served: str, http: HttpKind) -> None:
    """The same calls through aiohttp (the default where installed) and httpx against a real
    `metering serve`: a user id with a slash reaches its routes, errors are typed, and a
    gateway that does not answer is GatewayUnreachable after the retries."""
    user = f"team/{http}"
    async with MeteringClient(served, ADMIN_KEY, http=http) as m:
        done = await m.debit(user, "0.25", model="m", input_tokens=3)
        assert done.credits_remaining == "4.750000"
        assert (await m.balance(user)).credits_remaining == "4.750000"
        assert [g.remaining for g in (await m.grants(user)).grants] == ["4.750000"]
        with pytest.raises(InsufficientCreditsError) as short:
            await m.debit(user, "100")
        assert short.value.credits_remaining == Decimal("4.75")
        with pytest.raises(MeteringAPIError) as bad:
            await m.debit(user, "x")
        assert bad.value.status == 400 and "amount" in bad.value.detail
    async with MeteringClient("http://127.0.0.1:9", ADMIN_KEY, http=http, retries=1) as down:
        with pytest.raises(GatewayUnreachable):
            await down.balance(user)
