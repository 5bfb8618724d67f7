"""What a client may send, beyond the schemas' types, checked the same on every path.

- Amounts follow one grammar. A string is ASCII digits with an optional point and digits
  (``"12.50"``; no sign but '-', no exponent, no '_', no spaces, no other scripts' digits); a
  JSON number is taken exactly as written (never through a float) and may not use an exponent.
  Range and places are parse_amount's rules (gateway.credits.money).
- Metadata is a JSON object of at most METADATA_MAX_BYTES encoded, METADATA_MAX_DEPTH levels
  and METADATA_MAX_KEYS keys in all, on a debit, a batch item and a commit alike.
- A body is nested at most MAX_BODY_DEPTH levels; deeper JSON is a 400, never a RecursionError.
- Text that is stored or logged holds no control characters (C0, DEL, C1), no line or paragraph
  separators and no invisible or direction-changing characters; patterns end with \\Z, as `$`
  would also accept a trailing newline.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import msgspec

MAX_BODY_DEPTH = 32
METADATA_MAX_BYTES = 8192
METADATA_MAX_DEPTH = 8
METADATA_MAX_KEYS = 64

# C0, DEL, C1; zero-width and direction marks; line/paragraph separators, embeddings and
# overrides; word joiner and isolates; the byte-order mark
_UNSEEN = r"\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
# no unseen characters, and no white space at either end
NAME_PATTERN = rf"^[^\s{_UNSEEN}](?:[^{_UNSEEN}]*[^\s{_UNSEEN}])?\Z"
TEXT_PATTERN = rf"^[^{_UNSEEN}]*\Z"

_AMOUNT_TEXT = re.compile(r"-?[0-9]{1,30}(?:\.[0-9]{1,30})?")
AMOUNT_GRAMMAR = (
    'a decimal string of ASCII digits with an optional point, like "12.50" (no exponent, '
    "spaces or separators), or a JSON number written the same way"
)


class Amount(Decimal):
    """An amount that passed the grammar (its range is checked by parse_amount)."""


class _Exponent(Decimal):
    """A JSON number written with an exponent (1e3): not in the amount grammar."""


def json_number(text: str) -> Decimal:
    """The decoders' float hook: a JSON number with a fraction or exponent, exactly as written."""
    return _Exponent(text) if "e" in text or "E" in text else Decimal(text)


def decode_amount(_: type, value: Any) -> Amount:
    """msgspec's hook for Amount fields: the value as the client wrote it."""
    if isinstance(value, str):
        if len(value) > 64 or _AMOUNT_TEXT.fullmatch(value) is None:
            raise ValueError(f"must be {AMOUNT_GRAMMAR}; got {value[:40]!r}")
        return Amount(value)
    if isinstance(value, bool):
        raise ValueError("must be a decimal string or a number, not a boolean")
    if isinstance(value, _Exponent):
        raise ValueError(f"must be {AMOUNT_GRAMMAR}; got a number with an exponent")
    if isinstance(value, (int, Decimal)):
        return Amount(value)
    if isinstance(value, float):  # a decoder without json_number (msgspec.convert of a dict)
        return Amount(repr(value))
    raise ValueError(f"must be {AMOUNT_GRAMMAR}")


def is_amount(kind: Any) -> bool:
    return kind is Amount


def decoder(kind: Any) -> msgspec.json.Decoder[Any]:
    """A JSON decoder for request bodies: numbers exact, amounts in their grammar."""
    return msgspec.json.Decoder(kind, dec_hook=decode_amount, float_hook=json_number)


def _shape(value: Any, limit: int) -> tuple[bool, int]:
    """Whether a decoded JSON value nests more than `limit` arrays or objects, and how many
    object keys the walk met (all of them when it is not too deep)."""
    keys, level = 0, [(value, 1)]
    while level:
        node, depth = level.pop()
        if isinstance(node, dict):
            keys += len(node)
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True, keys
        level.extend((child, depth + 1) for child in children)
    return False, keys


EMPTY_BODY = "the body is empty: send a JSON object"


def too_deep(value: Any, limit: int) -> bool:
    return _shape(value, limit)[0]


_encode = msgspec.json.Encoder(decimal_format="number").encode


def encode_metadata(metadata: dict[str, Any]) -> bytes:
    """Metadata as stored: JSON, numbers as the client wrote them."""
    return _encode(metadata)


def check_metadata(metadata: dict[str, Any]) -> None:
    """Raise ValueError, naming the rule, unless metadata is within every bound."""
    raw = encode_metadata(metadata)
    if len(raw) > METADATA_MAX_BYTES:
        raise ValueError(
            f"metadata is {len(raw)} bytes as JSON; at most {METADATA_MAX_BYTES} are allowed"
        )
    if b"\\u0000" in raw:
        raise ValueError("metadata may not contain NUL characters (\\u0000)")
    deep, keys = _shape(metadata, METADATA_MAX_DEPTH)
    if deep:
        raise ValueError(f"metadata nests more than {METADATA_MAX_DEPTH} levels")
    if keys > METADATA_MAX_KEYS:
        raise ValueError(f"metadata has {keys} keys; at most {METADATA_MAX_KEYS} are allowed")
