"""Order and transfer validation, and the exact decimal conversion at the API's edge."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from api import schemas
from api.errors import ApiError
from api.validation import check_order, check_transfer, order_id_for
from crypton.config import load_markets
from crypton.domain.messages import PlaceOrder

MARKETS = load_markets()
BTC = MARKETS.market("BTC-USDT")
SECRET = b"test-secret-of-the-api"
_OLD_NAMESPACE = uuid.UUID("5b0f3a52-51c1-4d55-9d8e-0c7a3e6b1f00")  # unkeyed ids, issue 11


def order(**fields: object) -> schemas.NewOrder:
    base: dict[str, object] = {"market": "BTC-USDT", "side": "buy", "type": "limit"}
    base.update(fields)
    return msgspec.convert(base, schemas.NewOrder)


def place(body: schemas.NewOrder) -> PlaceOrder:
    return check_order(MARKETS, "alice", body, "c1", 1_000, SECRET)


def rejected(body: schemas.NewOrder) -> tuple[str | None, str]:
    with pytest.raises(ApiError) as info:
        place(body)
    assert info.value.status == 400
    return info.value.body.field, info.value.body.message


def test_limit_order_becomes_exact_units() -> None:
    cmd = place(order(price="50000.01", quantity="0.0012"))
    assert cmd.price == 50_000_010_000  # USDT has 6 decimals
    assert cmd.quantity == 120_000  # BTC has 8
    assert cmd.funds is None
    assert cmd.order_id == order_id_for(SECRET, "alice", "c1")
    assert (cmd.user_id, cmd.client_order_id, cmd.ts, cmd.time_in_force) == (
        "alice",
        "c1",
        1_000,
        "GTC",
    )


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"market": "DOGE-USDT", "price": "1", "quantity": "1"}, "market", "unknown market"),
        ({"price": "50000.0000001", "quantity": "0.001"}, "price", "more than 6 decimals"),
        ({"price": "50000.001", "quantity": "0.001"}, "price", "multiple of the tick"),
        ({"price": "0.055", "quantity": "1000"}, "price", "multiple of the tick"),
        ({"price": "50000", "quantity": "0.000000001"}, "quantity", "more than 8 decimals"),
        ({"price": "50000", "quantity": "0.00015"}, "quantity", "multiple of the step"),
        ({"price": "50000", "quantity": "0.00001"}, "quantity", "multiple of the step"),
        ({"price": "1", "quantity": "1"}, "quantity", "below the minimum"),
        ({"price": "50000"}, "quantity", "needs price and quantity"),
        ({"quantity": "1"}, "price", "needs price and quantity"),
        ({"price": "0", "quantity": "1"}, "price", "greater than zero"),
        ({"price": "50000", "quantity": "0"}, "quantity", "greater than zero"),
        ({"price": "50000", "quantity": "1", "funds": "10"}, "funds", "only for market buys"),
        (
            {"price": "50000", "quantity": "1", "post_only": True, "time_in_force": "IOC"},
            "post_only",
            "GTC",
        ),
        (
            {"price": "50000", "quantity": "1", "post_only": True, "time_in_force": "FOK"},
            "post_only",
            "GTC",
        ),
        ({"price": "99999999999", "quantity": "99999999"}, "quantity", "too large"),
        ({"type": "market", "quantity": "1"}, "funds", "needs funds"),
        ({"type": "market"}, "funds", "needs funds"),
        ({"type": "market", "funds": "100", "price": "1"}, "price", "takes no price"),
        ({"type": "market", "funds": "100", "post_only": True}, "post_only", "post_only"),
        ({"type": "market", "funds": "100", "time_in_force": "FOK"}, "time_in_force", "FOK"),
        ({"type": "market", "funds": "1"}, "funds", "below the minimum"),
        ({"type": "market", "funds": "1.0000001"}, "funds", "decimals"),
        ({"type": "market", "side": "sell"}, "quantity", "needs a quantity"),
        ({"type": "market", "side": "sell", "quantity": "1", "funds": "5"}, "funds", "no funds"),
        ({"type": "market", "side": "sell", "quantity": "0.00005"}, "quantity", "multiple"),
    ],
)
def test_invalid_orders_name_the_field(fields: dict[str, object], field: str, words: str) -> None:
    got_field, message = rejected(order(**fields))
    assert got_field == field
    assert words in message


def test_market_orders_never_rest() -> None:
    buy = place(order(type="market", funds="100"))
    assert (buy.funds, buy.quantity, buy.price, buy.time_in_force) == (
        100_000_000,
        None,
        None,
        "IOC",
    )
    sell = place(order(type="market", side="sell", quantity="0.5", time_in_force="FOK"))
    assert (sell.quantity, sell.time_in_force) == (50_000_000, "FOK")


@pytest.mark.parametrize("text", ["-1", "1e5", "NaN", "1,5", " 1", "0x10", "\u0661", ""])
def test_body_rejects_non_plain_decimals_before_our_code(text: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        order(price=text, quantity="1")


def test_amounts_must_be_strings_never_floats() -> None:
    with pytest.raises(msgspec.ValidationError):
        order(price=50000.5, quantity="1")


def test_unknown_body_fields_are_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        order(price="1", quantity="1", leverage="100")


@given(
    price=st.integers(1, 10**9).map(lambda n: n * BTC.tick),
    quantity=st.integers(1, 10**5).map(lambda n: n * BTC.step),
)
def test_decimal_round_trip_is_exact(price: int, quantity: int) -> None:
    """What a client reads back is what it sent, digit for digit."""
    body = order(price=BTC.price_text(price), quantity=BTC.quantity_text(quantity))
    if BTC.notional(price, quantity) < BTC.min_notional:
        return
    cmd = place(body)
    assert (cmd.price, cmd.quantity) == (price, quantity)
    view = schemas.from_order(BTC, cmd)
    assert (view.price, view.quantity) == (body.price, body.quantity)


def test_order_ids_are_deterministic_per_user_and_client_id() -> None:
    def oid(user: str, client_order_id: str, secret: bytes = SECRET) -> str:
        return order_id_for(secret, user, client_order_id)

    assert oid("a", "x") == oid("a", "x")
    assert len({oid("a", "x"), oid("b", "x"), oid("a", "y")}) == 3
    # Not a naive concatenation: ("a", "bc") and ("ab", "c") differ.
    assert oid("a", "bc") != oid("ab", "c")
    # Keyed: without the server's secret, nobody can tell whose order an id is.
    assert oid("a", "x") != oid("a", "x", b"another-secret")
    assert oid("a", "x") != str(uuid.uuid5(_OLD_NAMESPACE, "a\x00x"))
    assert uuid.UUID(oid("a", "x")).version == 8


def test_transfers() -> None:
    body = msgspec.convert(
        {"asset": "BTC", "amount": "0.5", "transfer_id": "t-1"}, schemas.TransferRequest
    )
    credit = check_transfer(MARKETS, "alice", "credit", body, 5)
    assert (credit.amount, credit.asset, credit.ts) == (50_000_000, "BTC", 5)
    assert type(credit).__name__ == "Credit"
    assert type(check_transfer(MARKETS, "alice", "debit", body, 5)).__name__ == "Debit"
    unknown = msgspec.convert(
        {"asset": "XRP", "amount": "1", "transfer_id": "t"}, schemas.TransferRequest
    )
    with pytest.raises(ApiError, match="unknown asset"):
        check_transfer(MARKETS, "alice", "credit", unknown, 5)
    fine = msgspec.convert(
        {"asset": "USDT", "amount": "1.0000001", "transfer_id": "t"}, schemas.TransferRequest
    )
    with pytest.raises(ApiError, match="decimals"):
        check_transfer(MARKETS, "alice", "credit", fine, 5)


def test_average_price_is_rounded_to_the_quote_precision() -> None:
    # 0.3 BTC for 10000.000001 USDT: 33333.33333666... per BTC
    assert schemas.average_price(BTC, 10_000_000_001, 30_000_000) == "33333.333337"
    assert schemas.average_price(BTC, 0, 0) is None
