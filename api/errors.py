"""One error shape for every failure: ``{"code", "message", "field"?}``.

Codes are stable identifiers a program can branch on; messages are for people.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from crypton.wire import ErrorBody

log = logging.getLogger("crypton.api")


class ApiError(Exception):
    """An error the API answers deliberately, with its status, code and reason."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        retry_after: int | None = None,
        reason_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(code=code, message=message, field=field, reason_code=reason_code)
        self.retry_after = retry_after
        """Seconds a client should wait before retrying (the ``Retry-After`` header)."""


def invalid(field: str | None, message: str, reason_code: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request", message, field, reason_code=reason_code)


def not_found(what: str, name: str) -> ApiError:
    return ApiError(404, f"{what}_not_found", f"{what.replace('_', ' ')} {name!r} not found")


def too_many_streams(limit: int) -> ApiError:
    return ApiError(429, "too_many_streams", f"at most {limit} open streams per user; close one")


RETRY_AFTER_S = 1
"""What a 503 asks clients to wait: a broker that restarts answers again within seconds,
and a request that reaches a broker still down costs at most the produce timeout."""


def unavailable(message: str, retry_after: int = RETRY_AFTER_S) -> ApiError:
    """503: the log cannot be written (or read) right now; retry with the same ids."""
    return ApiError(503, "unavailable", message, retry_after=retry_after)


_DESCRIPTIONS = {
    400: "Invalid request; `field` names the offending field",
    401: "Missing or wrong credentials",
    403: "The API key lacks the scope this route needs (`trade`)",
    404: "Not found (or not yours)",
    409: "Conflict with the current state",
    413: "The body is larger than this route accepts",
    415: "The body is not sent as application/json",
    429: "Too many requests (`rate_limited`, see Retry-After) or open streams",
    503: "The broker or the read model is not available; retry with the same ids",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a route can answer. 400 is always there:
    Litestar would otherwise document its own body for parameter errors, not ours; 429
    too: every route is rate limited."""
    statuses = tuple(sorted({400, 429, *statuses}))
    return {
        s: ResponseSpec(
            data_container=ErrorBody,
            description=_DESCRIPTIONS.get(s, HTTPStatus(s).phrase),
            generate_examples=False,
        )
        for s in statuses
    }


def _respond(
    status: int, body: ErrorBody, headers: dict[str, str] | None = None
) -> Response[ErrorBody]:
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[ErrorBody]:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.retry_after is not None:
        headers = {"Retry-After": str(exc.retry_after)}
    return _respond(exc.status, exc.body, headers)


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorBody]:
    field = None
    message = exc.detail
    extra = exc.extra if isinstance(exc.extra, list) else []
    if extra and isinstance(extra[0], dict):
        field = str(extra[0].get("key") or "") or None
        message = str(extra[0].get("message") or message)
    return _respond(400, ErrorBody("invalid_request", message, field))


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    if isinstance(exc, NotFoundException):
        code = "not_found"
    elif isinstance(exc, MethodNotAllowedException):
        code = "method_not_allowed"
    elif isinstance(exc, NotAuthorizedException):
        code = "unauthorized"
    else:
        code = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    headers = dict(exc.headers or {})
    return _respond(status, ErrorBody(code, exc.detail), headers)


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _respond(500, ErrorBody("internal_error", "internal error; it has been logged"))


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ApiError: _api_error,
    ValidationException: _validation,
    HTTPException: _http,
    Exception: _internal,
}
