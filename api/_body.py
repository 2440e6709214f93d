"""Strict JSON request bodies, checked after authentication and before Litestar parses them.

Litestar decodes leniently (``"true"`` or ``1`` for a bool, any Content-Type,
duplicate keys with the last one winning) and recurses without a bound. A body
must therefore pass ``decode_strict`` first, in a guard: guards run after the
credentials are checked and before the handler's ``data`` is decoded, so an
anonymous caller never gets a body parsed, and Litestar only ever sees bodies
whose strict and lenient readings agree. The size is bounded by the route's
``request_max_body_size`` (a 413), read before any parsing.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any, Final, TypeVar, cast

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from .errors import ApiError, invalid

T = TypeVar("T", bound=msgspec.Struct)

MAX_DEPTH: Final = 4
"""Our bodies are flat objects; anything nested deeper than this is not one of them."""
_OPEN: Final = frozenset(b"[{")
_CLOSE: Final = frozenset(b"]}")
_FIELD: Final = re.compile(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*)")


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _check_depth(body: bytes) -> None:
    """Reject nesting deeper than ``MAX_DEPTH`` with a scan that cannot recurse."""
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            if depth > MAX_DEPTH:
                raise invalid(None, f"the body is nested deeper than {MAX_DEPTH} levels")
        elif byte in _CLOSE:
            depth -= 1


@cache
def _patterns(kind: type[msgspec.Struct]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """The top-level string fields of ``kind`` that carry a pattern."""
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    out = []
    for field in info.fields:
        options = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else ()
        for t in (field.type, *options):
            if isinstance(t, msgspec.inspect.StrType) and t.pattern is not None:
                out.append((field.name, re.compile(t.pattern)))
    return tuple(out)


def _check_patterns(value: msgspec.Struct) -> None:
    """A pattern must match the whole string. msgspec searches, and ``$`` also matches
    before a final newline, so ``"c-1\\n"`` would pass ``^[a-z0-9-]+$``; ``\\Z`` would
    say it, but OpenAPI patterns are ECMA regexes, which lack it."""
    for name, pattern in _patterns(type(value)):
        text = getattr(value, name)
        if text is None:
            continue
        match = pattern.search(text)
        if match is None or match.end() != len(text):
            raise invalid(name, f"{name} does not match {pattern.pattern}")


def decode_strict(body: bytes, kind: type[T]) -> T:
    """The body as a ``kind``, or an ``ApiError`` (400) naming the problem.

    >>> class Point(msgspec.Struct):
    ...     x: int
    >>> decode_strict(b'{"x": 1}', Point)
    Point(x=1)
    >>> decode_strict(b'{"x": 1, "x": 2}', Point)
    Traceback (most recent call last):
    api.errors.ApiError: duplicate key 'x'
    """
    _check_depth(body)
    try:
        json.loads(body, object_pairs_hook=_no_duplicates)
    except _DuplicateKeyError as exc:
        raise invalid(exc.key, f"duplicate key {exc.key!r}") from None
    except (ValueError, UnicodeDecodeError):
        raise invalid(None, "the body is not valid JSON") from None
    try:
        value = msgspec.json.decode(body, type=kind, strict=True)
    except msgspec.ValidationError as exc:
        match = _FIELD.search(str(exc))
        raise invalid(match[1] if match else None, str(exc)) from None
    except msgspec.DecodeError:
        raise invalid(None, "the body is not valid JSON") from None
    _check_patterns(value)
    return value


def check_content_type(header: str | None) -> None:
    media_type = (header or "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(
            415, "unsupported_media_type", "send the body as 'Content-Type: application/json'"
        )


def strict_json(kind: type[msgspec.Struct], *, optional: bool = False) -> Guard:
    """A guard admitting only a body that ``decode_strict`` accepts as a ``kind`` (or no
    body at all when ``optional``). Put it after the guard that authenticates."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        request = cast(Request[Any, Any, Any], connection)  # guards of HTTP routes get it
        body = await request.body()  # at most the route's request_max_body_size
        if optional and body.strip() in (b"", b"null"):
            return
        check_content_type(connection.headers.get("content-type"))
        decode_strict(body, kind)

    return guard
