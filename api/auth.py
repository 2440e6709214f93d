"""Bearer authentication: user API keys and the admin token.

A key is looked up by its SHA-256 in the users table folded from
``crypton.users``; the admin token comes from ``CRYPTON_ADMIN_TOKEN``. Both
failures look the same to the caller (401), and a user id is never revealed.
"""

from __future__ import annotations

import hmac
from typing import Any, Final

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler

from crypton.users import hash_key

from ._context import Context
from .errors import ApiError, unavailable

BEARER: Final = "bearer"
SECURITY: Final[list[dict[str, list[str]]]] = [{BEARER: []}]
_USER_STATE: Final = "crypton_user_id"


def _bearer(request: ASGIConnection[Any, Any, Any, Any]) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <api key>'")
    return token.strip()


def _context(request: ASGIConnection[Any, Any, Any, Any]) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


TRADE: Final = {"scope": "trade"}
"""``opt`` of the routes that place or cancel orders: a ``read`` key gets a 403 there.
Every other user route needs ``read``."""


def _scope(handler: BaseRouteHandler) -> str:
    return str(handler.opt.get("scope", "read"))


async def current_user(request: Request[Any, Any, Any]) -> str:
    """The user the request's API key belongs to, if the key has the route's scope."""
    known = request.state.get(_USER_STATE)
    if isinstance(known, str):  # already checked by ``user_guard``
        return known
    return _authenticate(request, _scope(request.route_handler))


async def user_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Authenticate before anything else of the request is read: Litestar resolves
    dependencies together with the body, so a route with a body needs this guard."""
    connection.state[_USER_STATE] = _authenticate(connection, _scope(handler))


def _authenticate(request: ASGIConnection[Any, Any, Any, Any], scope: str) -> str:
    token = _bearer(request)
    ctx = _context(request)
    if not ctx.readmodel.ready.is_set():
        raise unavailable("the API is still reading the log; retry shortly")
    with ctx.readmodel.read() as model:
        key = model.key_by_hash(hash_key(token))
    if key is None:
        raise ApiError(401, "unauthorized", "unknown API key")
    user_id, scopes = key
    if scope not in scopes:
        raise ApiError(403, "forbidden", f"this API key lacks the {scope!r} scope")
    return user_id


async def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard, not a dependency: Litestar runs guards on every request to the route,
    while a dependency runs only if the handler asks for it. OPTIONS (which methods a
    path has) is no secret: its router-wide handler answers without the token."""
    if connection.scope.get("method") == "OPTIONS":
        return
    token = _bearer(connection)
    expected = _context(connection).config.admin_token
    # compare_digest: the comparison time does not reveal how much of the token matched.
    if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "admin routes need the admin token as Bearer")


async def provide_context(request: Request[Any, Any, Any]) -> Context:
    return _context(request)


USER_ONLY: Final = {"user": Provide(current_user)}
"""For one user route in a public area (whose router provides ``ctx``)."""
USER: Final = {**USER_ONLY, "ctx": Provide(provide_context)}
ADMIN_GUARDS: Final = [admin_guard]
PUBLIC: Final = {"ctx": Provide(provide_context)}
