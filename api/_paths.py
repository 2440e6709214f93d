"""Refuse request paths whose meaning depends on normalisation.

The router treats ``/v1/orders/``, ``/v1/orders//`` and ``/v1/orders/%2F`` as
``/v1/orders``: a client that builds ``/v1/orders/{id}`` with an empty id would
reach the collection instead of one order. Such paths are a client bug, so they
get a 400 before any handler runs, whatever their method.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)

from crypton.wire import ErrorBody

# An empty segment (``//`` or a trailing ``/``), or an encoded ``/`` or ``\`` that
# decoding would turn into a separator.
_AMBIGUOUS: Final = re.compile(rb"//|/\Z|%2[Ff]|%5[Cc]")
_BODY: Final = msgspec.json.encode(
    ErrorBody(
        "invalid_request",
        "the path has an empty segment or an encoded '/': check the ids it is built from",
    )
)


def ambiguous(raw_path: bytes) -> bool:
    """``True`` for API paths that only resolve after normalisation.

    >>> ambiguous(b"/v1/orders/"), ambiguous(b"/v1/orders/%2F"), ambiguous(b"/v1/orders/o-1")
    (True, True, False)
    """
    return raw_path.startswith(b"/v1/") and _AMBIGUOUS.search(raw_path) is not None


class StrictPathMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and ambiguous(_raw_path(scope)):
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": 400,
                "headers": [(b"content-type", b"application/json")],
            }
            body: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": _BODY,
                "more_body": False,
            }
            await send(start)
            await send(body)
            return
        await self.app(scope, receive, send)


def _raw_path(scope: Scope) -> bytes:
    raw = scope.get("raw_path")
    return raw if isinstance(raw, bytes) else scope["path"].encode()
