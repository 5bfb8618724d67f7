"""How Litestar routes read a JSON body: numbers exactly as written, amounts in their grammar,
at most MAX_BODY_DEPTH levels (a deeper body is a 400, not a RecursionError); and how an amount
appears in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import ClientException
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.plugins import OpenAPISchemaPlugin
from litestar.types import Empty
from litestar.typing import FieldDefinition

from gateway.credits.inputs import (
    AMOUNT_GRAMMAR,
    EMPTY_BODY,
    MAX_BODY_DEPTH,
    Amount,
    decoder,
    too_deep,
)

_decode = decoder(Any).decode


def read_json(body: bytes) -> Any:
    """A request body as Python values; ClientException (400) when it is not acceptable JSON
    (every route that reads a body needs one)."""
    if not body.strip():
        raise ClientException(EMPTY_BODY)
    try:
        value = _decode(body)
    except RecursionError:
        value = None
    except msgspec.DecodeError as exc:
        raise ClientException(f"the body is not valid JSON: {exc}") from None
    else:
        if not too_deep(value, MAX_BODY_DEPTH):
            return value
    raise ClientException(f"the JSON body nests more than {MAX_BODY_DEPTH} levels")


class MeteringRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        if self._json is Empty:
            cached = self._connection_state.json
            if cached is Empty:
                cached = self._connection_state.json = read_json(await self.body())
            self._json = cached
        return self._json


class AmountSchema(OpenAPISchemaPlugin):
    @staticmethod
    def is_plugin_supported_type(value: Any) -> bool:
        return value is Amount

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        return Schema(
            one_of=[
                Schema(type=OpenAPIType.STRING, pattern=r"^[0-9]{1,12}(\.[0-9]{1,6})?$"),
                Schema(type=OpenAPIType.NUMBER, minimum=0),
            ],
            description=AMOUNT_GRAMMAR,
            examples=["12.50"],
        )
