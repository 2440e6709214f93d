"""Request and response bodies, declared once as msgspec structs (they are the OpenAPI).

Amounts cross the API as decimal strings in the asset's precision and become
integers of the smallest unit inside (``crypton.domain.money``); times are
milliseconds since the epoch. The ``from_*`` helpers turn state records into
resources and are the only place that formats numbers for clients.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from crypton.candles import Candle
from crypton.domain.markets import Market
from crypton.domain.messages import (
    BalanceState,
    DepthState,
    OrderState,
    OrderStatus,
    OrderType,
    PlaceOrder,
    SelfTradePrevention,
    Side,
    TimeInForce,
    Trade,
    TransferState,
)
from crypton.domain.money import to_text
from crypton.domain.orders import REASON_CODES, ReasonCode
from crypton.readmodel import Fill, Ticker
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


# --- conversions ----------------------------------------------------------------------


def _code(code: str | None) -> ReasonCode | None:
    """A record's code if it is one this API documents (records are trusted, but a code
    added by a newer dataflow must not break an older API's response schema)."""
    return code if code in REASON_CODES else None  # type: ignore[return-value]


def _opt(value: int | None, precision: int) -> str | None:
    return None if value is None else to_text(value, precision)


def average_price(market: Market, filled_funds: int, filled_quantity: int) -> str | None:
    """The volume-weighted price, rounded half-up to the quote's precision."""
    if filled_quantity <= 0:
        return None
    scaled = filled_funds * market.base.scale
    return market.price_text((2 * scaled + filled_quantity) // (2 * filled_quantity))


def from_order(market: Market, s: OrderState | PlaceOrder, *, pending: bool = False) -> OrderView:
    q, b = market.quote.precision, market.base.precision
    if isinstance(s, PlaceOrder):
        return OrderView(
            order_id=s.order_id, client_order_id=s.client_order_id, market=s.market,
            side=s.side, type=s.type, price=_opt(s.price, q), quantity=_opt(s.quantity, b),
            funds=_opt(s.funds, q), filled_quantity="0", filled_funds="0", average_price=None,
            fee="0", status="PENDING", reason=None, reason_code=None, time_in_force=s.time_in_force,
            post_only=s.post_only, stp=s.stp, created_at=s.ts, updated_at=s.ts,
        )  # fmt: skip
    return OrderView(
        order_id=s.order_id, client_order_id=s.client_order_id, market=s.market, side=s.side,
        type=s.type, price=_opt(s.price, q), quantity=_opt(s.quantity, b),
        funds=_opt(s.funds, q), filled_quantity=to_text(s.filled_quantity, b),
        filled_funds=to_text(s.filled_funds, q),
        average_price=average_price(market, s.filled_funds, s.filled_quantity),
        fee=to_text(s.fee, q), status="PENDING" if pending else s.status, reason=s.reason,
        reason_code=_code(s.reason_code),
        time_in_force=s.time_in_force, post_only=s.post_only, stp=s.stp,
        created_at=s.created_at, updated_at=s.updated_at,
    )  # fmt: skip


def from_transfer(t: TransferState, precision: int) -> TransferView:
    return TransferView(
        transfer_id=t.transfer_id, user_id=t.user_id, direction=t.direction, asset=t.asset,
        amount=to_text(t.amount, precision), status=t.status, reason=t.reason,
        reason_code=_code(t.reason_code), time=t.ts,
    )  # fmt: skip


def from_balances(state: BalanceState | None, precisions: dict[str, int]) -> dict[str, BalanceView]:
    """Every configured asset, zero where the user holds none."""
    held = state.balances if state is not None else {}
    out = {}
    for asset, precision in precisions.items():
        b = held.get(asset)
        out[asset] = BalanceView(
            available=to_text(b.available if b else 0, precision),
            held=to_text(b.held if b else 0, precision),
        )
    return out


def from_market(m: Market) -> MarketView:
    return MarketView(
        market=m.symbol, base=m.base.code, quote=m.quote.code,
        base_precision=m.base.precision, quote_precision=m.quote.precision,
        tick=m.price_text(m.tick), step=m.quantity_text(m.step),
        min_quantity=m.quantity_text(m.min_quantity), min_notional=m.quote_text(m.min_notional),
        maker_fee_bps=m.maker_fee_bps, taker_fee_bps=m.taker_fee_bps,
    )  # fmt: skip


def from_depth(m: Market, d: DepthState | None, levels: int) -> DepthView:
    if d is None:
        return DepthView(market=m.symbol, seq=0, bids=[], asks=[], time=0)
    return DepthView(
        market=m.symbol,
        seq=d.seq,
        bids=[[m.price_text(p), m.quantity_text(q)] for p, q in d.bids[:levels]],
        asks=[[m.price_text(p), m.quantity_text(q)] for p, q in d.asks[:levels]],
        time=d.ts,
    )


def from_trade(m: Market, t: Trade) -> TradeView:
    return TradeView(
        seq=t.seq, market=t.market, price=m.price_text(t.price),
        quantity=m.quantity_text(t.quantity), taker_side=t.taker_side,
        maker_order_id=t.maker_order_id, taker_order_id=t.taker_order_id, time=t.time,
    )  # fmt: skip


def from_fill(m: Market, f: Fill, client_order_id: str | None) -> FillView:
    t = f.trade
    return FillView(
        seq=t.seq, market=t.market, order_id=f.order_id, client_order_id=client_order_id,
        side=f.side, liquidity=f.liquidity,
        price=m.price_text(t.price), quantity=m.quantity_text(t.quantity),
        funds=m.quote_text(t.notional), fee=m.quote_text(f.fee), fee_asset=m.quote.code,
        time=t.time,
    )  # fmt: skip


def from_candle(m: Market, c: Candle) -> CandleView:
    return CandleView(
        start=c.start, open=m.price_text(c.open), high=m.price_text(c.high),
        low=m.price_text(c.low), close=m.price_text(c.close),
        volume=m.quantity_text(c.volume), quote_volume=m.quote_text(c.quote_volume),
        trades=c.trades,
    )  # fmt: skip


def change_percent(open_price: int | None, last: int | None) -> str | None:
    """(last - open) / open in percent, rounded half away from zero to two decimals.

    >>> change_percent(100, 101), change_percent(3, 2), change_percent(None, 1)
    ('1.00', '-33.33', None)
    """
    if open_price is None or last is None or open_price <= 0:
        return None
    hundredths = (abs(last - open_price) * 20_000 + open_price) // (2 * open_price)
    sign = "-" if last < open_price and hundredths else ""
    return f"{sign}{hundredths // 100}.{hundredths % 100:02d}"


def from_ticker(m: Market, t: Ticker, depth: DepthState | None, now: int) -> TickerView:
    price = m.price_text
    bid = depth.bids[0][0] if depth is not None and depth.bids else None
    ask = depth.asks[0][0] if depth is not None and depth.asks else None
    return TickerView(
        market=m.symbol,
        last=None if t.last is None else price(t.last),
        bid=None if bid is None else price(bid),
        ask=None if ask is None else price(ask),
        open=None if t.open is None else price(t.open),
        high=None if t.high is None else price(t.high),
        low=None if t.low is None else price(t.low),
        volume=m.quantity_text(t.volume),
        quote_volume=m.quote_text(t.quote_volume),
        change_percent=change_percent(t.open, t.last),
        trades=t.trades,
        time=now,
    )
