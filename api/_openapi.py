"""Make the OpenAPI document and the OPTIONS answers match what the API does.

Two things Litestar cannot know or gets wrong:

* Markets and assets come from configuration, so their enums can only be added to
  the generated document once the app knows its markets.
* Litestar builds a path's automatic OPTIONS handler when the first handler of
  that path is registered, so ``Allow`` would name only that handler's methods
  (``OPTIONS /v1/orders/{id}`` said ``GET, OPTIONS``). ``options_handlers`` gives
  each path an explicit one listing every method of the path.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, get_args

import msgspec
from litestar import Litestar, MediaType, Response
from litestar.enums import HttpMethod
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
)
from litestar.openapi.spec.enums import OpenAPIType
from litestar.status_codes import HTTP_204_NO_CONTENT

from crypton.domain.markets import Markets

_TYPED_PARAM = re.compile(r"\{(\w+):\w+\}")


def options_handlers(handlers: Iterable[HTTPRouteHandler]) -> list[HTTPRouteHandler]:
    """One OPTIONS handler per path of ``handlers``, answering 204 with ``Allow``."""
    methods: dict[str, set[str]] = defaultdict(lambda: {HttpMethod.OPTIONS.value})
    for handler in handlers:
        for path in handler.paths:
            methods[path] |= {str(m) for m in handler.http_methods}
    return [_options(path, ", ".join(sorted(allowed))) for path, allowed in methods.items()]


def _options(path: str, allow: str) -> HTTPRouteHandler:
    def options() -> Response[None]:
        return Response(
            None,
            status_code=HTTP_204_NO_CONTENT,
            headers={"Allow": allow},
            media_type=MediaType.TEXT,
        )

    return HTTPRouteHandler(
        path=path, http_method=[HttpMethod.OPTIONS], include_in_schema=False, sync_to_thread=False
    )(options)


def operation_id(handler: HTTPRouteHandler, method: str, path: list[Any]) -> str:
    """The handler's function name in camelCase (``place_order`` -> ``placeOrder``): what
    generated clients name their methods, instead of ``V1OrdersPlaceOrder``."""
    head, *rest = handler.handler_name.split("_")
    return head + "".join(word.title() for word in rest)


_EVENT_STREAMS = {
    "/v1/stream/markets/{market}": (
        "Server-sent events (`text/event-stream`) of one market: `trade` (data: a TradeView), "
        "`depth` (data: a DepthView), `live` (the replay is over), `resync` (data: "
        '`{"reason"}`: refetch and reconnect). Each event\'s `id` resumes the stream on '
        "any replica as `Last-Event-ID`."
    ),
    "/v1/stream/me": (
        "Server-sent events (`text/event-stream`) of the caller: `order` (data: an "
        "OrderView), `balance` (data: `{asset: BalanceView}`), `fill` (data: a FillView: "
        "order_id, client_order_id, trade seq, price, quantity, fee, liquidity, time), "
        '`live` (the snapshot or replay is over), `resync` (data: `{"reason"}`: refetch '
        "and reconnect). Each event's `id` resumes the stream on any replica as "
        "`Last-Event-ID`."
    ),
}


def _document_event_streams(paths: dict[str, Any]) -> None:
    for path, description in _EVENT_STREAMS.items():
        operation = paths[path].get
        event = Schema(
            type=OpenAPIType.STRING,
            description="`event: <type>`, `id: <cursor>`, `data: <JSON>` lines per event",
        )
        operation.responses["200"] = OpenAPIResponse(
            description=description,
            content={"text/event-stream": OpenAPIMediaType(schema=event)},
        )


def refine_schema(app: Litestar, handlers: Iterable[HTTPRouteHandler], markets: Markets) -> None:
    """Document the event streams as ``text/event-stream``, add the configured markets and
    assets as enums, mark optional bodies as such and
    bodies that refuse unknown fields as closed (``additionalProperties: false``), in the
    document the app serves (Litestar builds it once and keeps it)."""
    doc = app.openapi_schema
    _document_event_streams(doc.paths or {})
    symbols, assets = list(markets.markets), list(markets.assets)
    for item in (doc.paths or {}).values():
        for method in ("get", "put", "post", "delete", "patch"):
            operation: Operation | None = getattr(item, method)
            for param in (operation.parameters or []) if operation else []:
                if isinstance(param, Parameter) and param.name == "market":
                    _enumerate(param.schema, symbols)
    components = (doc.components.schemas or {}) if doc.components else {}
    _enumerate(_property(components["NewOrder"], "market"), symbols)
    _enumerate(_property(components["TransferRequest"], "asset"), assets)
    for handler in handlers:
        data = handler.parsed_fn_signature.parameters.get("data")
        if data is None:
            continue
        for kind in (data.annotation, *get_args(data.annotation)):
            if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
                body = components[kind.__name__]
                if isinstance(body, Schema) and kind.__struct_config__.forbid_unknown_fields:
                    body.additional_properties = False
        if not data.is_optional:
            continue
        for path in handler.paths:
            item = (doc.paths or {})[_TYPED_PARAM.sub(r"{\1}", path)]
            for method in handler.http_methods:
                operation = getattr(item, str(method).lower())
                if operation is not None and isinstance(operation.request_body, RequestBody):
                    operation.request_body.required = False


def _property(schema: Schema | Reference, name: str) -> Schema | Reference | None:
    assert isinstance(schema, Schema) and schema.properties is not None
    return schema.properties.get(name)


def _enumerate(schema: Schema | Reference | None, values: Sequence[str]) -> None:
    """Restrict the string variant(s) of ``schema`` to ``values``."""
    if not isinstance(schema, Schema):
        return
    if schema.type == OpenAPIType.STRING:
        schema.enum = list(values)
        schema.pattern = schema.max_length = schema.min_length = None
    for variant in [*(schema.one_of or ()), *(schema.any_of or ())]:
        _enumerate(variant, values)
