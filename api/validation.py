"""Checks every order and transfer against the market rules before anything reaches Kafka.

Pure functions: a request body in, a command of ``crypton.domain.messages`` out,
or an ``ApiError`` naming the field, the reason and its code. The rules are the
domain's (``crypton.domain.orders.check``), which the wallet step applies again
as the authority; a client deserves a precise 400 at once rather than a
REJECTED state a moment later.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from crypton.domain.markets import Markets
from crypton.domain.messages import Credit, Debit, PlaceOrder
from crypton.domain.money import AmountError, to_units
from crypton.domain.orders import check, effective_time_in_force

from .errors import invalid
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
        raise invalid(field, f"{field}: {exc}", "out_of_range") from None


def check_order(
    markets: Markets, user_id: str, body: NewOrder, client_order_id: str, ts: int, secret: bytes
) -> PlaceOrder:
    """The ``PlaceOrder`` command for a valid request; raises ``ApiError`` (400) otherwise,
    with the domain's reason and reason code (``crypton.domain.orders.check``, the rules
    the wallet step applies too). ``secret`` keys the order id (``order_id_for``)."""
    market = markets.get(body.market)
    if market is None:
        raise invalid("market", f"unknown market {body.market!r}", "unknown_market")
    q, b = market.quote.precision, market.base.precision
    command = PlaceOrder(
        user_id=user_id,
        order_id=order_id_for(secret, user_id, client_order_id),
        client_order_id=client_order_id,
        market=market.symbol,
        side=body.side,
        type=body.type,
        price=_units("price", body.price, q),
        quantity=_units("quantity", body.quantity, b),
        funds=_units("funds", body.funds, q),
        time_in_force=effective_time_in_force(body.type, body.time_in_force),
        post_only=body.post_only,
        stp=body.stp,
        ts=ts,
    )
    problem = check(market, command)
    if problem is not None:
        raise invalid(problem.field, problem.reason, problem.code)
    return command


def check_transfer(
    markets: Markets, user_id: str, direction: str, body: TransferRequest, ts: int
) -> Credit | Debit:
    """The ``Credit`` or ``Debit`` command for a valid request."""
    asset = markets.assets.get(body.asset)
    if asset is None:
        raise invalid("asset", f"unknown asset {body.asset!r}", "unknown_asset")
    amount = _units("amount", body.amount, asset.precision)
    assert amount is not None
    kind = Credit if direction == "credit" else Debit
    return kind(
        user_id=user_id, asset=asset.code, amount=amount, transfer_id=body.transfer_id, ts=ts
    )
