"""Every 400 names the field and says the rule in words: no regex reaches a client, an empty body
says it is empty, on the fast path and on the framework's routes alike; and every pattern a
request can be refused by has its words (a new pattern without them fails here)."""

from __future__ import annotations

import inspect as pyinspect

import msgspec
import pytest

from gateway.credits import coupon_schemas, grant_schemas, price_schemas, schemas
from gateway.credits.messages import RULES
from tests.conftest import Client

PRINTABLE = "must be printable ASCII characters only"
NAME = "must be text without control, invisible or direction-changing characters and without"


@pytest.mark.parametrize(
    ("method", "path", "body", "key", "words"),
    [
        (
            "POST",
            "/api/v1/credits/debit",
            {"user_id": "a", "amount": "1", "request_id": "é"},
            "request_id",
            PRINTABLE,
        ),
        (
            "POST",
            "/api/v1/credits/debit",
            {"user_id": "   ", "amount": "1", "request_id": "r"},
            "user_id",
            NAME,
        ),
        (
            "POST",
            "/api/v1/credits/reservations",
            {"user_id": " x", "amount": "1", "request_id": "r"},
            "user_id",
            NAME,
        ),
        (
            "POST",
            "/api/v1/credits/grant",
            {"user_id": "a", "amount": "1", "request_id": "r\u0001"},
            "request_id",
            PRINTABLE,
        ),
        (
            "POST",
            "/api/v1/admin/keys",
            {"name": "has space", "scopes": ["read"]},
            "name",
            "must be printable ASCII characters without spaces",
        ),
        ("GET", "/api/v1/credits/balance?user_id=%20x", None, "user_id", NAME),
        ("GET", "/api/v1/audit?action=Grant", None, "action", "must be an audit action"),
        (
            "POST",
            "/api/v1/credits/reservations/nope/commit",
            {},
            "reservation_id",
            "must be a reservation id",
        ),
    ],
)
async def test_a_refused_pattern_is_said_in_words(
    client: Client, method: str, path: str, body: object, key: str, words: str
) -> None:
    r = await client.request(method, path, json=body)
    assert r.status_code == 400, r.text
    [item] = [i for i in r.json()["extra"] if i["key"] == key]
    assert item["message"].startswith(words), item
    assert "regex" not in r.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/credits/debit"),  # the fast path
        ("POST", "/api/v1/credits/reservations"),  # the fast path
        ("POST", "/api/v1/credits/debit/batch"),
        ("PUT", "/api/v1/pricing/some-model"),
        ("POST", "/api/v1/credits/grant"),
        ("POST", "/api/v1/admin/keys"),
    ],
)
@pytest.mark.parametrize("body", [b"", b"  \n"])
async def test_an_empty_body_says_so(client: Client, method: str, path: str, body: bytes) -> None:
    r = await client.request(method, path, content=body)
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == "the body is empty: send a JSON object"


def _patterns(kind: msgspec.inspect.Type, seen: set[int]) -> set[str]:
    """Every string pattern anywhere in a type."""
    if id(kind) in seen:
        return set()
    seen.add(id(kind))
    found = {kind.pattern} if isinstance(kind, msgspec.inspect.StrType) and kind.pattern else set()
    for value in vars(kind).values() if hasattr(kind, "__dict__") else ():
        found |= _walk(value, seen)
    for name in getattr(kind, "__struct_fields__", ()):
        found |= _walk(getattr(kind, name), seen)
    return found


def _walk(value: object, seen: set[int]) -> set[str]:
    if isinstance(value, msgspec.inspect.Type):
        return _patterns(value, seen)
    if isinstance(value, tuple | list):
        return {p for v in value for p in _walk(v, seen)}
    if isinstance(value, msgspec.inspect.Field):
        return _walk(value.type, seen)
    return set()


def test_every_pattern_a_request_can_fail_has_words() -> None:
    structs = [
        obj
        for module in (schemas, coupon_schemas, grant_schemas, price_schemas)
        for _, obj in pyinspect.getmembers(module, pyinspect.isclass)
        if issubclass(obj, msgspec.Struct) and obj.__module__ == module.__name__
    ]
    found = set().union(*(_patterns(msgspec.inspect.type_info(s), set()) for s in structs))
    assert found and found <= set(RULES), found - set(RULES)
