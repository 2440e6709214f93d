"""Turns state records into the API's bodies (declared in ``crypton.wire``, re-exported
here); the only place that formats numbers for clients.
"""

from __future__ import annotations

from crypton.candles import Candle
from crypton.domain.markets import Market
from crypton.domain.messages import (
    BalanceState,
    DepthState,
    OrderState,
    PlaceOrder,
    Trade,
    TransferState,
)
from crypton.domain.money import to_text
from crypton.domain.orders import REASON_CODES, ReasonCode
from crypton.readmodel import Fill, Ticker
from crypton.wire import *  # noqa: F403  (the bodies: routes name them as schemas.X)
from crypton.wire import (
    BalanceView,
    CandleView,
    DepthView,
    FillView,
    MarketView,
    OrderView,
    TickerView,
    TradeView,
    TransferView,
)

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
