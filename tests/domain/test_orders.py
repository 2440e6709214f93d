"""Order rules: every rejection reason of ``order_problem``, and what orders hold."""

from __future__ import annotations

from typing import Any

import pytest

from crypton.domain.messages import PlaceOrder
from crypton.domain.money import MAX_UNITS
from crypton.domain.orders import (
    REASON_CODES,
    check,
    code_of,
    effective_time_in_force,
    hold_for,
    order_problem,
)

from .support import BTC_USDT, MARKETS, btc, usdt

PRICE = usdt("50000")
QTY = btc("0.01")


def order(**fields: Any) -> PlaceOrder:
    base: dict[str, Any] = {
        "user_id": "u", "order_id": "o", "client_order_id": "c", "market": "BTC-USDT",
        "side": "buy", "type": "limit", "price": PRICE, "quantity": QTY, "ts": 0,
    }  # fmt: skip
    return PlaceOrder(**{**base, **fields})


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"side": "sell"},
        {"post_only": True},
        {"time_in_force": "IOC"},
        {"time_in_force": "FOK", "stp": "expire_both"},
        {"type": "market", "price": None, "quantity": None, "funds": usdt("5")},
        {"type": "market", "price": None, "quantity": None, "funds": usdt("5"),
         "time_in_force": "IOC"},
        {"type": "market", "side": "sell", "price": None, "time_in_force": "FOK"},
        {"price": usdt("0.01"), "quantity": btc("500")},  # value exactly 5 USDT
    ],
)  # fmt: skip
def test_valid_orders(fields: dict[str, Any]) -> None:
    assert order_problem(BTC_USDT, order(**fields)) is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"post_only": True, "time_in_force": "IOC"}, "post_only needs a GTC limit order"),
        ({"post_only": True, "type": "market", "price": None}, "post_only needs a GTC limit"),
        ({"price": None}, "a limit order needs price and quantity"),
        ({"quantity": None}, "a limit order needs price and quantity"),
        ({"funds": 1}, "funds is only for market buys"),
        ({"price": 0}, "price out of range"),
        ({"price": -10_000}, "price out of range"),
        ({"price": MAX_UNITS + 1}, "price out of range"),
        ({"price": PRICE + 1}, "price must be a multiple of the tick 0.01"),
        ({"quantity": 0}, "quantity out of range"),
        ({"quantity": -QTY}, "quantity out of range"),
        ({"quantity": MAX_UNITS + 1}, "quantity out of range"),
        ({"quantity": QTY + 1}, "quantity must be a multiple of the step 0.0001"),
        ({"price": usdt("1"), "quantity": btc("4.9999")}, "order value below the minimum 5"),
        ({"price": usdt("9000000000000"), "quantity": btc("1000")}, "order value too large"),
        ({"type": "market", "quantity": None, "funds": 5}, "a market order takes no price"),
        ({"type": "market", "price": None, "funds": usdt("5")}, "a market buy needs funds"),
        ({"type": "market", "price": None, "quantity": None}, "a market buy needs funds"),
        ({"type": "market", "price": None, "quantity": None, "funds": usdt("5"),
          "time_in_force": "FOK"}, "FOK needs a quantity"),
        ({"type": "market", "price": None, "quantity": None, "funds": 0},
         "funds out of range"),
        ({"type": "market", "price": None, "quantity": None, "funds": MAX_UNITS + 1},
         "funds out of range"),
        ({"type": "market", "price": None, "quantity": None, "funds": usdt("4.999999")},
         "funds below the minimum 5"),
        ({"type": "market", "side": "sell", "price": None, "quantity": None},
         "a market sell needs a quantity and no funds"),
        ({"type": "market", "side": "sell", "price": None, "funds": 1},
         "a market sell needs a quantity and no funds"),
        ({"type": "market", "side": "sell", "price": None, "quantity": 5},
         "quantity must be a multiple of the step"),
        ({"type": "market", "side": "sell", "price": None, "quantity": 0},
         "quantity out of range"),
    ],
)  # fmt: skip
def test_every_rejection_reason(fields: dict[str, Any], reason: str) -> None:
    problem = order_problem(BTC_USDT, order(**fields))
    assert problem is not None
    assert problem.startswith(reason), problem


def test_quantity_below_the_minimum() -> None:
    eth = MARKETS.market("ETH-USDT")  # min_quantity 0.001 = 10 steps
    cmd = order(market="ETH-USDT", quantity=btc("0.0009"), price=usdt("10000"))
    assert order_problem(eth, cmd) == "quantity below the minimum 0.001"


def test_holds() -> None:
    # A limit buy holds its value plus the taker fee (20 bps, rounded up).
    assert hold_for(BTC_USDT, order()) == ("USDT", usdt("500") + usdt("1"))
    assert hold_for(BTC_USDT, order(price=usdt("0.01"), quantity=btc("500"))) == (
        "USDT",
        usdt("5.01"),
    )
    cheap = order(price=usdt("0.01"), quantity=btc("0.0001"))  # value 1 unit, fee rounds to 1
    assert hold_for(BTC_USDT, cheap) == ("USDT", 2)
    assert hold_for(BTC_USDT, order(side="sell")) == ("BTC", QTY)
    market_buy = order(type="market", price=None, quantity=None, funds=usdt("123.45"))
    assert hold_for(BTC_USDT, market_buy) == ("USDT", usdt("123.45"))
    market_sell = order(type="market", side="sell", price=None)
    assert hold_for(BTC_USDT, market_sell) == ("BTC", QTY)


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"price": PRICE + 1}, "invalid_tick", "price"),
        ({"quantity": QTY + 1}, "invalid_step", "quantity"),
        ({"price": usdt("1"), "quantity": btc("4.9999")}, "below_min_notional", "quantity"),
        ({"price": None}, "invalid_order", "price"),
        ({"price": 0}, "out_of_range", "price"),
        ({"type": "market", "price": None, "quantity": None, "funds": usdt("4.999999")},
         "below_min_notional", "funds"),
    ],
)  # fmt: skip
def test_every_problem_has_a_code_and_a_field(
    fields: dict[str, Any], code: str, field: str
) -> None:
    problem = check(BTC_USDT, order(**fields))
    assert problem is not None
    assert (problem.code, problem.field) == (code, field)
    assert problem.code in REASON_CODES


def test_below_min_quantity_code() -> None:
    eth = MARKETS.market("ETH-USDT")
    problem = check(eth, order(market="ETH-USDT", quantity=btc("0.0009"), price=usdt("10000")))
    assert problem is not None and problem.code == "below_min_quantity"


def test_book_reasons_have_codes() -> None:
    for reason, code in [
        ("post-only order would take liquidity", "post_only_would_take"),
        ("self-trade prevented", "self_trade_prevented"),
        ("no more liquidity", "no_liquidity"),
        ("FOK: not enough liquidity to fill in full", "fok_not_filled"),
        ("IOC: unfilled remainder expired", "ioc_not_filled"),
    ]:
        assert code_of(reason) == code


def test_market_orders_never_rest() -> None:
    assert effective_time_in_force("market", "GTC") == "IOC"
    assert effective_time_in_force("market", "FOK") == "FOK"
    assert effective_time_in_force("limit", "GTC") == "GTC"
