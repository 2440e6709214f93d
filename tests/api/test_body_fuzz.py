"""Fuzzing the API's request parsing (issue 11), bounded: request bodies, paths and
stream cursors from hypothesis. A body is either the struct the handler would get or
a 400 naming the problem; nothing else escapes (no RecursionError, no 500)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import schemas
from api._body import decode_strict
from api._paths import ambiguous
from api._sse import format_user_cursor, parse_market_cursor, parse_user_cursor
from api.errors import ApiError
from api.validation import check_order
from crypton.config import load_markets

MARKETS = load_markets()
FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
BODIES: list[type[msgspec.Struct]] = [schemas.NewOrder, schemas.TransferRequest, schemas.NewUser]
ORDER: dict[str, Any] = {
    "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "50000",
    "quantity": "0.001", "time_in_force": "GTC", "post_only": False, "client_order_id": "c-1",
    "stp": "expire_taker",
}  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)


def parsed(body: bytes, kind: type[msgspec.Struct]) -> msgspec.Struct | None:
    try:
        value = decode_strict(body, kind)
    except ApiError as exc:
        assert exc.status == 400 and exc.body.message
        return None
    # Litestar decodes leniently after the guard: both readings must agree.
    assert msgspec.convert(msgspec.json.decode(body), kind, strict=False) == value
    return value


def placed(order: schemas.NewOrder) -> None:
    try:
        check_order(MARKETS, "alice", order, "c-1", 1, b"fuzzing-secret-xyz")
    except ApiError as exc:
        assert exc.status == 400


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(BODIES))
def test_any_bytes_are_a_body_or_a_400(body: bytes, kind: type[msgspec.Struct]) -> None:
    parsed(body, kind)


@FUZZ
@given(st.text(alphabet='[]{}":,0 \\a', max_size=3000))
def test_any_nesting_is_a_400_not_a_recursion_error(text: str) -> None:
    parsed(text.encode(), schemas.NewOrder)


@pytest.mark.parametrize("depth", [5, 100, 10_000, 1_000_000])
def test_deep_nesting(depth: int) -> None:
    for body in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        assert parsed(body.encode(), schemas.NewOrder) is None


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(ORDER)), json_values, max_size=4), st.booleans())
def test_orders_with_odd_fields_are_an_order_or_a_400(
    changes: dict[str, Any], duplicate: bool
) -> None:
    text = json.dumps({**ORDER, **changes})
    if duplicate and changes:  # the same key twice: refused, whatever the values
        name = next(iter(changes))
        text = text[:-1] + f", {json.dumps(name)}: {json.dumps(ORDER[name])}}}"
    order = parsed(text.encode(), schemas.NewOrder)
    if duplicate and changes:
        assert order is None
    if isinstance(order, schemas.NewOrder):
        placed(order)


@FUZZ
@given(st.text(alphabet="/%2fF5cC.ab-", max_size=30))
def test_a_path_the_router_would_normalise_is_ambiguous(tail: str) -> None:
    raw = "/v1/orders/" + tail
    if not ambiguous(raw.encode()):
        path = unquote(raw)
        assert "//" not in path and not path.endswith("/") and "\\" not in path


@FUZZ
@given(st.text(max_size=200))
def test_stream_cursors_are_known_partitions_or_refused(text: str) -> None:
    known = {("order", 0), ("order", 1), ("balance", 0)}
    cursor = parse_user_cursor(text, known)
    if cursor is not None:
        assert set(cursor) <= known and len(text) <= 4096
        assert parse_user_cursor(format_user_cursor(cursor), known) == cursor
    market = parse_market_cursor(text)
    assert market is None or f"{market[0]}:{market[1]}" == text
