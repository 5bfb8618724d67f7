"""Hostile bodies on every route, against a real `metering serve`: hypothesis builds requests
that each break exactly one rule (a body nested past any limit, metadata too large or too deep,
an amount outside the grammar, a name with control, invisible or direction-changing characters,
a path parameter no id can be, a date no calendar converts). Every answer is a 4xx (in a batch,
every item's), never a 5xx; afterwards nothing was written anywhere (no user, ledger row, key,
coupon, price or audit entry; no Redis key but the gateway's own bookkeeping)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import msgspec
import pytest
import redis
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.credits.inputs import METADATA_MAX_BYTES
from tests.conftest import ADMIN_KEY, REDIS_URL
from tests.processes import Running, gateway_process

EXAMPLES = int(os.environ.get("METERING_HOSTILE_EXAMPLES", "100"))
DEEP = "\x00deep\x00"  # replaced, once encoded, by JSON nested `depth` levels
UNSEEN = "\x00\x07\x1b\x7f\x85\x9b\u200b\u200e\u2028\u2029\u202e\u2066\ufeff"

# --- hostile values, each invalid wherever it is put ------------------------------------------


def _deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


deep_depth = st.integers(min_value=40, max_value=3000)
odd_text = st.text(st.characters(codec="utf-8"), max_size=40)


@st.composite
def bad_name(draw: st.DrawFn, kinds: tuple[str, ...] = ("unseen", "space", "empty", "long")) -> str:
    """Not a user id, model or key name: an unseen character somewhere, white space at an end
    (not for model names, which may have it), empty, or too long."""
    kind = draw(st.sampled_from(kinds))
    base = draw(st.text(st.characters(codec="utf-8", exclude_characters=UNSEEN), max_size=20))
    if kind == "unseen":
        at = draw(st.integers(0, len(base)))
        return base[:at] + draw(st.sampled_from(UNSEEN)) + base[at:]
    if kind == "space":
        return draw(st.sampled_from([" ", "\u3000", "\u00a0"])) + base
    if kind == "empty":
        return ""
    return "x" * draw(st.integers(256, 1000))


GRAMMAR = re.compile(r"-?[0-9]+(\.[0-9]+)?")


@st.composite
def bad_amount(draw: st.DrawFn, zero_ok: bool = False) -> Any:
    """Outside the amount grammar or its range (a price may be 0, and have 12 digits)."""
    kinds = ["text", "places", "big", "exponent", "bool"] + ([] if zero_ok else ["zero"])
    kind = draw(st.sampled_from(kinds))
    if kind == "text":
        return draw(odd_text.filter(lambda s: GRAMMAR.fullmatch(s) is None))
    if kind == "places":
        return f"1.{draw(st.integers(1, 10**9)):07d}1"
    if kind == "big":
        return str(draw(st.integers(10**13 if zero_ok else 10**6, 10**40)))
    if kind == "zero":
        return draw(st.sampled_from(["0", "-1", "0.000000", -5, 0]))
    if kind == "exponent":
        return draw(st.sampled_from(["1e3", "1E-3", "Infinity", "NaN", "1_000", "\uff11"]))
    return draw(st.booleans())


@st.composite
def bad_metadata(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["deep", "big", "keys", "nul", "type"]))
    if kind == "deep":
        return DEEP
    if kind == "big":
        return {"k": "x" * draw(st.integers(METADATA_MAX_BYTES, 60_000))}
    if kind == "keys":
        return {f"k{i}": i for i in range(draw(st.integers(65, 300)))}
    if kind == "nul":
        return {"k": "a\x00b"}
    return draw(st.sampled_from([[1], "text", 5]))


bad_request_id = st.one_of(
    st.just(""),
    st.just("sys:reserved"),
    st.text(min_size=129, max_size=300, alphabet="r"),
    odd_text.map(lambda s: s + "\n"),
    odd_text.filter(lambda s: any(not (" " <= c <= "~") for c in s)),
)
bad_time = st.sampled_from(
    [
        "9999-12-31T23:00:00-05:00",
        "0001-01-01T00:00:00+14:00",
        "yesterday",
        "1969-12-31",
        "9999-06-01",
    ]
)

# --- routes: a valid body, and which fields to break with what --------------------------------

GOOD_ID = "rv0_" + "0" * 32
UUID = "00000000-0000-7000-8000-000000000000"
Route = tuple[str, str, dict[str, Any], dict[str, st.SearchStrategy[Any]]]
ROUTES: list[Route] = [
    (
        "POST",
        "/api/v1/credits/debit",
        {"user_id": "u", "amount": "1", "request_id": "r", "model": "m"},
        {
            "user_id": bad_name(),
            "amount": bad_amount(),
            "request_id": bad_request_id,
            "metadata": bad_metadata(),
            "model": bad_name(("unseen", "empty", "long")),
        },
    ),
    (
        "POST",
        "/api/v1/credits/grant",
        {"user_id": "u", "amount": "1", "request_id": "r"},
        {"user_id": bad_name(), "amount": bad_amount(), "request_id": bad_request_id},
    ),
    (
        "POST",
        "/api/v1/credits/refund",
        {"user_id": "u", "transaction_id": UUID, "request_id": "r"},
        {"user_id": bad_name(), "amount": bad_amount(), "transaction_id": odd_text},
    ),
    (
        "POST",
        "/api/v1/credits/reservations",
        {"user_id": "u", "amount": "1", "request_id": "r"},
        {"user_id": bad_name(), "amount": bad_amount(), "ttl_seconds": st.integers(3601)},
    ),
    (
        "POST",
        f"/api/v1/credits/reservations/{GOOD_ID}/commit",
        {"amount": "1"},
        {"amount": bad_amount(), "metadata": bad_metadata()},
    ),
    (
        "POST",
        "/api/v1/admin/keys",
        {"name": "k", "scopes": ["read"]},
        {"name": bad_name(), "scopes": st.just(["root"])},
    ),
    (
        "POST",
        "/api/v1/coupons",
        {"credits": "1", "code": "CODE1"},
        {"credits": bad_amount(), "code": bad_name(), "expires_at": bad_time},
    ),
    (
        "POST",
        "/api/v1/coupons/CODE1/redeem",
        {"user_id": "u", "request_id": "r"},
        {"user_id": bad_name(), "request_id": bad_request_id},
    ),
    (
        "PUT",
        "/api/v1/pricing/m",
        {"input_per_million": "1", "output_per_million": "1"},
        {"input_per_million": bad_amount(zero_ok=True)},
    ),
    (
        "POST",
        "/api/v1/credits/u/reset",
        {"request_id": "r"},
        {"request_id": bad_request_id},
    ),
    ("PUT", "/api/v1/credits/u/tier", {"tier": "free"}, {"tier": st.just("x" * 51)}),
]
PATH_ROUTES = [  # {} is a path parameter filled with a name no user, key or code can have
    ("PUT", "/api/v1/credits/{}/tier", {"tier": "free"}),
    ("POST", "/api/v1/credits/{}/reset", {"request_id": "r"}),
    ("GET", "/api/v1/credits/{}/transactions", None),
    ("GET", "/api/v1/credits/{}/usage", None),
    ("DELETE", "/api/v1/admin/keys/{}", None),
    ("POST", "/api/v1/credits/reservations/{}/commit", {"amount": "1"}),
    ("DELETE", "/api/v1/credits/reservations/{}", None),
    ("GET", "/api/v1/coupons/{}", None),
    ("POST", "/api/v1/coupons/{}/redeem", {"user_id": "u", "request_id": "r"}),
]
QUERY_ROUTES = [
    ("/api/v1/credits/balance", {"user_id": bad_name()}),
    ("/api/v1/credits/u/usage", {"from": bad_time, "to": bad_time}),
    ("/api/v1/credits/u/transactions", {"cursor": odd_text, "limit": st.integers(501)}),
    ("/api/v1/audit", {"user_id": bad_name(), "action": odd_text.map(lambda s: s + "\n")}),
]


def encode(body: dict[str, Any], depth: int) -> bytes:
    raw = msgspec.json.encode(body)
    return raw.replace(msgspec.json.encode(DEEP), _deep(depth))


@pytest.fixture(scope="module")
def gw() -> Iterator[Running]:
    with gateway_process() as running:
        yield running


@pytest.fixture(scope="module")
def http(gw: Running) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=30) as c:
        yield c


def refused(r: httpx.Response) -> None:
    """A refusal for the request's shape: no 5xx, and none of the answers (402, 409) that come
    from looking at an account."""
    assert 400 <= r.status_code < 500 and r.status_code not in (402, 409), r.text[:500]


@settings(
    max_examples=EXAMPLES * 3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.data(),
    route=st.sampled_from(ROUTES),
    depth=deep_depth,
    unknown=st.booleans(),
)
def test_hostile_bodies_are_refused(
    http: httpx.Client, data: st.DataObject, route: Route, depth: int, unknown: bool
) -> None:
    method, path, body, breakers = route
    field = data.draw(st.sampled_from(sorted(breakers)))
    broken = {**body, field: data.draw(breakers[field])}
    if unknown:  # and an unknown field, deep, beside it
        broken["unknown_field"] = DEEP
    raw = encode(broken, depth)
    refused(http.request(method, path, content=raw))
    if path == "/api/v1/credits/debit":  # the same item in a batch: refused alone, with its 400
        r = http.post("/api/v1/credits/debit/batch", content=b'{"debits":[' + raw + b"]}")
        assert r.status_code in (200, 400, 413), r.text[:500]
        if r.status_code == 200:
            assert [i["status"] for i in r.json()["results"]] == [400], r.text[:500]


@settings(
    max_examples=EXAMPLES * 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(route=st.sampled_from(PATH_ROUTES), name=bad_name())
def test_hostile_path_parameters_are_refused(
    http: httpx.Client, route: tuple[str, str, Any], name: str
) -> None:
    method, template, body = route
    path = template.format(quote(name, safe=""))
    r = http.request(method, path, content=None if body is None else msgspec.json.encode(body))
    if r.status_code in (200, 404, 405) and not name:
        return  # an empty segment is another route (or none): nothing to refuse
    refused(r)


@settings(
    max_examples=EXAMPLES * 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data(), route=st.sampled_from(QUERY_ROUTES))
def test_hostile_queries_are_refused(
    http: httpx.Client, data: st.DataObject, route: tuple[str, dict[str, Any]]
) -> None:
    path, breakers = route
    field = data.draw(st.sampled_from(sorted(breakers)))
    r = http.get(path, params={field: str(data.draw(breakers[field]))})
    if r.status_code == 404 and path.startswith("/api/v1/credits/u/"):
        return  # the user 'u' does not exist: answered before the query is read
    refused(r)


def test_nothing_was_written(gw: Running, http: httpx.Client) -> None:
    """Runs last in this module: all the refused requests above left no trace."""

    async def counts() -> dict[str, int]:
        conn = await asyncpg.connect(gw.database)
        try:
            tables = ["user_credits", "credit_transactions", "api_keys", "coupons"]
            tables += ["coupon_redemptions", "model_pricing", "audit_log"]
            return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}
        finally:
            await conn.close()

    assert asyncio.run(counts()) == dict.fromkeys(
        [
            "user_credits",
            "credit_transactions",
            "api_keys",
            "coupons",
            "coupon_redemptions",
            "model_pricing",
            "audit_log",
        ],
        0,
    )
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    left = sorted(k.split(":", 1)[1] for k in r.scan_iter(match=f"{gw.prefix}:*", count=1000))
    r.close()
    assert all(k in ("marker", "schema", "flushers") for k in left), left
