"""Validation messages in words: msgspec names a refused pattern by its regex ("Expected `str`
matching regex '^[\\x20-\\x7e]+\\Z'"), which tells a client nothing; each pattern the API uses
is said here as a rule, and the API's 400s (the framework's and the fast path's) say it."""

from __future__ import annotations

from gateway.credits.coupon_schemas import COUPON_CODE_PATTERN
from gateway.credits.inputs import TEXT_PATTERN
from gateway.credits.schemas import (
    ACTION_PATTERN,
    KEY_NAME_PATTERN,
    NO_NUL_PATTERN,
    REQUEST_ID_PATTERN,
    RESERVATION_ID_PATTERN,
    USER_ID_PATTERN,
)

RULES = {
    USER_ID_PATTERN: "must be text without control, invisible or direction-changing characters "
    "and without white space at either end",
    REQUEST_ID_PATTERN: "must be printable ASCII characters only (space to '~')",
    TEXT_PATTERN: "must be text without control, invisible or direction-changing characters",
    KEY_NAME_PATTERN: "must be printable ASCII characters without spaces",
    RESERVATION_ID_PATTERN: "must be a reservation id as the reserve call returned it "
    "(rv<shard>_<32 hex digits>)",
    COUPON_CODE_PATTERN: "must be letters, digits, '_' or '-' only",
    NO_NUL_PATTERN: "must not contain NUL characters",
    ACTION_PATTERN: "must be an audit action: lower-case letters, '_' and '.', like "
    "'grant.purchase'",
}

_SAID = {f"Expected `str` matching regex {pattern!r}": words for pattern, words in RULES.items()}


def in_words(message: str) -> str:
    """The message with a regex named by its rule; any other message as it was."""
    return _SAID.get(message, message)
