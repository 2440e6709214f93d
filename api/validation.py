"""Checks every order and transfer against the market rules before anything reaches Kafka.

Pure functions: a request body in, a command of ``crypton.domain.messages`` out,
or an ``ApiError`` naming the field and the reason. The wallet step validates
again (it is the authority), but a client deserves a precise 400 at once
rather than a REJECTED state a moment later.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from crypton.domain.markets import Market, Markets
from crypton.domain.messages import Credit, Debit, PlaceOrder
from crypton.domain.money import MAX_UNITS, AmountError, to_units

from .errors import ApiError, invalid
from .schemas import NewOrder, TransferRequest


def order_id_for(secret: bytes, user_id: str, client_order_id: str) -> str:
    """The order id of a (user, client_order_id) pair: the same on every replica and retry,
    and, being keyed with the server secret, no clue to who placed the order (public
    trades carry order ids, and client order ids are often guessable).

    >>> order_id_for(b"k", "alice", "c1") == order_id_for(b"k", "alice", "c1")
    True
    >>> order_id_for(b"k", "alice", "c1") == order_id_for(b"k", "bob", "c1")
    False
    """
    mac = hmac.new(secret, f"{user_id}\x00{client_order_id}".encode(), hashlib.sha256)
    value = int.from_bytes(mac.digest()[:16], "big")
    # Shaped as an RFC 9562 version 8 (custom) UUID, like the ids before it.
    value = (value & ~(0xF << 76)) | (0x8 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return str(uuid.UUID(int=value))


def new_client_order_id() -> str:
    return uuid.uuid4().hex


def _units(field: str, text: str | None, precision: int) -> int | None:
    if text is None:
        return None
    try:
        return to_units(text, precision)
    except AmountError as exc:
        raise invalid(field, f"{field}: {exc}") from None


def _require(field: str, value: int | None, why: str) -> int:
    if value is None:
        raise invalid(field, f"{field} is required for {why}")
    return value


def _forbid(field: str, value: object, why: str) -> None:
    if value is not None:
        raise invalid(field, f"{field} must not be given for {why}")


def check_order(
    markets: Markets, user_id: str, body: NewOrder, client_order_id: str, ts: int, secret: bytes
) -> PlaceOrder:
    """The ``PlaceOrder`` command for a valid request; raises ``ApiError`` (400) otherwise.
    ``secret`` keys the order id (``order_id_for``)."""
    market = markets.get(body.market)
    if market is None:
        raise invalid("market", f"unknown market {body.market!r}")
    q, b = market.quote.precision, market.base.precision
    price = _units("price", body.price, q)
    quantity = _units("quantity", body.quantity, b)
    funds = _units("funds", body.funds, q)
    tif = body.time_in_force
    if body.type == "limit":
        what = "a limit order"
        price = _require("price", price, what)
        quantity = _require("quantity", quantity, what)
        _forbid("funds", funds, what)
        if body.post_only and tif != "GTC":
            raise invalid("post_only", "post_only orders rest on the book: use time_in_force GTC")
        if price % market.tick:
            raise invalid(
                "price", f"price must be a multiple of the tick {market.price_text(market.tick)}"
            )
        _check_quantity(market, quantity)
        value = market.notional(price, quantity)
        if value < market.min_notional:
            raise invalid(
                "quantity",
                f"order value {market.quote_text(value)} is below the minimum "
                f"{market.quote_text(market.min_notional)} {market.quote.code}",
            )
        if value + market.fee(value, market.taker_fee_bps) > MAX_UNITS:
            raise invalid("quantity", "order value is too large")
    else:
        _forbid("price", price, "a market order")
        if body.post_only:
            raise invalid("post_only", "a market order cannot be post_only")
        # A market order never rests: GTC (the default) means "take what is there".
        tif = "IOC" if tif == "GTC" else tif
        if body.side == "buy":
            what = "a market buy (it spends funds)"
            _forbid("quantity", quantity, what)
            funds = _require("funds", funds, what)
            if tif == "FOK":
                raise invalid("time_in_force", "FOK is not supported for a market buy by funds")
            if funds < market.min_notional:
                raise invalid(
                    "funds",
                    f"funds are below the minimum order value "
                    f"{market.quote_text(market.min_notional)} {market.quote.code}",
                )
        else:
            what = "a market sell (it sells a quantity)"
            _forbid("funds", funds, what)
            quantity = _require("quantity", quantity, what)
            _check_quantity(market, quantity)
    return PlaceOrder(
        user_id=user_id,
        order_id=order_id_for(secret, user_id, client_order_id),
        client_order_id=client_order_id,
        market=market.symbol,
        side=body.side,
        type=body.type,
        price=price,
        quantity=quantity,
        funds=funds,
        time_in_force=tif,
        post_only=body.post_only,
        stp=body.stp,
        ts=ts,
    )


def _check_quantity(market: Market, quantity: int) -> None:
    if quantity % market.step:
        raise invalid(
            "quantity",
            f"quantity must be a multiple of the step {market.quantity_text(market.step)}",
        )
    if quantity < market.min_quantity:
        raise invalid(
            "quantity",
            f"quantity is below the minimum {market.quantity_text(market.min_quantity)} "
            f"{market.base.code}",
        )


def check_transfer(
    markets: Markets, user_id: str, direction: str, body: TransferRequest, ts: int
) -> Credit | Debit:
    """The ``Credit`` or ``Debit`` command for a valid request."""
    asset = markets.assets.get(body.asset)
    if asset is None:
        raise ApiError(400, "invalid_request", f"unknown asset {body.asset!r}", "asset")
    amount = _units("amount", body.amount, asset.precision)
    assert amount is not None
    kind = Credit if direction == "credit" else Debit
    return kind(
        user_id=user_id, asset=asset.code, amount=amount, transfer_id=body.transfer_id, ts=ts
    )
