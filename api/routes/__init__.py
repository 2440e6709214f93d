"""Route handlers, one module per resource family, each mounted by one ``Router``."""

from __future__ import annotations

from typing import Any

from litestar import Router
from litestar.handlers import HTTPRouteHandler

from .._openapi import options_handlers


def area(tag: str, handlers: list[HTTPRouteHandler], **shared: Any) -> Router:
    """The Router of one area: its tag and ``shared`` (dependencies, guards, security)
    stated once for every handler, and an OPTIONS handler per path listing its methods
    (registered first, so Litestar does not make its own with only the first handler's)."""
    return Router(
        "/", tags=[tag], route_handlers=[*options_handlers(handlers), *handlers], **shared
    )
