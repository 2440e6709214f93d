"""The API's request and response bodies, declared once as msgspec structs: the API
serves them (they are its OpenAPI) and ``crypton.client`` decodes them.

Amounts cross the API as decimal strings in the asset's precision; times are
integers of milliseconds since the epoch, named ``time``, ``<event>_at`` or
``start``/``end`` (docs/api.md). ``api.schemas`` turns state records into these.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from crypton.domain.messages import (
    OrderStatus,
    OrderType,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from crypton.domain.orders import ReasonCode
from crypton.users import USER_ID_PATTERN, Scope

Amount = Annotated[
    str,
    Meta(
        pattern=r"^[0-9]{1,30}(\.[0-9]{1,20})?$",
        max_length=40,
        description='A positive decimal string, e.g. "0.015"; never a JSON number.',
        examples=["0.015"],
    ),
]
Identifier = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", max_length=64)]
UserId = Annotated[str, Meta(pattern=USER_ID_PATTERN, max_length=64)]
Millis = Annotated[int, Meta(description="Milliseconds since the Unix epoch")]
Decimal = Annotated[str, Meta(description="A decimal string")]
# A list, not a tuple: OpenAPI tools handle [price, quantity] better as a 2-item array.
Level = Annotated[list[str], Meta(min_length=2, max_length=2, description="[price, quantity]")]


class NewUser(msgspec.Struct, forbid_unknown_fields=True):
    user_id: UserId | None = None
    """Chosen by the client, or generated when absent."""


class UserCreated(msgspec.Struct):
    user_id: str
    api_key: str
    """Shown once: only its hash is stored."""
    key_id: str
    """The key's public id, to revoke it."""
    scopes: list[Scope]


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    scopes: Annotated[list[Scope], Meta(min_length=1, max_length=2)] | None = None
    """``read`` (orders, balances, fills, the user stream) and/or ``trade`` (place and
    cancel orders); both when absent."""


class KeyCreated(msgspec.Struct):
    key_id: str
    api_key: str
    """Shown once: only its hash is stored."""
    scopes: list[Scope]
    created_at: Millis


class KeyView(msgspec.Struct):
    """A key without its secret."""

    key_id: str
    scopes: list[Scope]
    created_at: Millis


class KeyPage(msgspec.Struct):
    items: list[KeyView]


class TransferRequest(msgspec.Struct, forbid_unknown_fields=True):
    asset: Annotated[str, Meta(pattern=r"^[A-Z0-9]{1,16}$")]
    amount: Amount
    transfer_id: Identifier
    """Idempotency key: repeating a transfer_id has no further effect."""


class TransferView(msgspec.Struct):
    transfer_id: str
    user_id: str
    direction: Literal["credit", "debit"]
    asset: str
    amount: Decimal
    status: Literal["PENDING", "ACCEPTED", "REJECTED"]
    """PENDING: in the log, not yet decided by the wallet."""
    reason: str | None
    reason_code: ReasonCode | None
    """Why it was REJECTED, for programs (``reason`` is for people)."""
    time: Millis
    """When the API took the request."""


class NewOrder(msgspec.Struct, forbid_unknown_fields=True):
    market: Annotated[str, Meta(max_length=32)]
    side: Side
    type: OrderType
    price: Amount | None = None
    quantity: Amount | None = None
    funds: Amount | None = None
    """Market buys: the most quote to spend, fees included."""
    time_in_force: TimeInForce = "GTC"
    post_only: bool = False
    client_order_id: Identifier | None = None
    """Idempotency key, unique per user; generated when absent."""
    stp: SelfTradePrevention = "expire_taker"


class OrderView(msgspec.Struct):
    order_id: str
    client_order_id: str
    market: str
    side: Side
    type: OrderType
    price: Decimal | None
    quantity: Decimal | None
    funds: Decimal | None
    filled_quantity: Decimal
    filled_funds: Decimal
    average_price: Decimal | None
    fee: Decimal
    status: OrderStatus | Literal["PENDING"]
    """PENDING: the command is in the log, the wallet has not processed it yet."""
    reason: str | None
    reason_code: ReasonCode | None
    """Why it was REJECTED, EXPIRED or CANCELED, for programs (``reason`` is for people)."""
    time_in_force: TimeInForce
    post_only: bool
    stp: SelfTradePrevention
    created_at: Millis
    updated_at: Millis


class OrderPage(msgspec.Struct):
    items: list[OrderView]
    next_cursor: str | None


class CancelAllResult(msgspec.Struct):
    market: str | None
    order_ids: list[str]
    """The orders open when the request was made: each will be canceled unless it fills first."""


class BalanceView(msgspec.Struct):
    available: Decimal
    held: Decimal


class MarketView(msgspec.Struct):
    market: str
    base: str
    quote: str
    base_precision: int
    quote_precision: int
    tick: Decimal
    step: Decimal
    min_quantity: Decimal
    min_notional: Decimal
    maker_fee_bps: int
    taker_fee_bps: int


class MarketPage(msgspec.Struct):
    items: list[MarketView]
    next_cursor: str | None = None


class DepthView(msgspec.Struct):
    market: str
    seq: int
    """The book sequence this snapshot reflects."""
    bids: list[Level]
    """Best (highest) first."""
    asks: list[Level]
    """Best (lowest) first."""
    time: Millis
    """When the book last changed (0 before its first order)."""


class TradeView(msgspec.Struct):
    seq: int
    market: str
    price: Decimal
    quantity: Decimal
    taker_side: Side
    maker_order_id: str
    taker_order_id: str
    time: Millis


class TradePage(msgspec.Struct):
    items: list[TradeView]
    next_cursor: str | None
    """The next page: pass as ``before_seq`` (newest-first pages) or as ``after_seq``
    (pages asked for with ``since`` or ``after_seq``, oldest first)."""


class FillView(msgspec.Struct):
    seq: int
    """The trade's sequence in its market."""
    market: str
    order_id: str
    client_order_id: str | None
    """The order's client_order_id (null if the order is no longer known to the API)."""
    side: Side
    liquidity: Literal["maker", "taker"]
    price: Decimal
    quantity: Decimal
    funds: Decimal
    fee: Decimal
    fee_asset: str
    time: Millis


class FillPage(msgspec.Struct):
    items: list[FillView]
    next_cursor: str | None


class ServerTime(msgspec.Struct):
    time: Millis
    """The server's clock: what it stamps on commands."""


class TickerView(msgspec.Struct):
    """The last price, the best bid and ask, and the last 24 hours (moving by the minute).
    Null where there is nothing to tell: no trade ever, no trade in 24 h, an empty side."""

    market: str
    last: Decimal | None
    bid: Decimal | None
    ask: Decimal | None
    open: Decimal | None
    high: Decimal | None
    low: Decimal | None
    volume: Decimal
    """Base traded in 24 h."""
    quote_volume: Decimal
    """Quote traded in 24 h."""
    change_percent: Decimal | None
    """(last - open) / open * 100, two decimals."""
    trades: int
    time: Millis


class TickerPage(msgspec.Struct):
    items: list[TickerView]


class CandleView(msgspec.Struct):
    start: Millis
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    """Base traded."""
    quote_volume: Decimal
    trades: int


class CandlePage(msgspec.Struct):
    items: list[CandleView]
    next_cursor: str | None = None


class Status(msgspec.Struct):
    status: str
    detail: dict[str, int] | None = None


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """Every error: ``{"code", "message", "field"?, "reason_code"?}``."""

    code: str
    """A stable identifier such as ``invalid_request`` or ``order_not_found``."""
    message: str
    field: str | None = None
    """The request field at fault, for validation errors."""
    reason_code: str | None = None
    """For an order or transfer refused by the exchange's rules: a ``ReasonCode``."""
