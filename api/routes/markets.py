"""Public market data: rules, depth, trades and candles."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import get
from litestar.params import Parameter

from crypton.domain.markets import Market

from .. import schemas
from .._context import Context
from ..auth import PUBLIC
from ..errors import error_responses, not_found

Limit = Annotated[int, Parameter(ge=1, le=1000, description="How many items at most")]


def market_of(ctx: Context, symbol: str) -> Market:
    market = ctx.markets.get(symbol)
    if market is None:
        raise not_found("market", symbol)
    return market


@get("/v1/markets", dependencies=PUBLIC, tags=["markets"], sync_to_thread=False)
def list_markets(ctx: Context) -> schemas.MarketPage:
    """Every market with its trading rules."""
    return schemas.MarketPage(items=[schemas.from_market(m) for m in ctx.markets])


@get("/v1/markets/{market:str}", dependencies=PUBLIC, tags=["markets"],
     responses=error_responses(404), sync_to_thread=False)  # fmt: skip
def get_market(ctx: Context, market: str) -> schemas.MarketView:
    return schemas.from_market(market_of(ctx, market))


@get("/v1/markets/{market:str}/depth", dependencies=PUBLIC, tags=["markets"],
     responses=error_responses(400, 404), sync_to_thread=False)  # fmt: skip
def get_depth(
    ctx: Context,
    market: str,
    levels: Annotated[int, Parameter(ge=1, le=1000, description="Levels per side")] = 50,
) -> schemas.DepthView:
    """Aggregated levels, best first, as of the book sequence ``seq``."""
    m = market_of(ctx, market)
    with ctx.readmodel.read() as model:
        depth = model.depth.get(m.symbol)
    return schemas.from_depth(m, depth, levels)


@get("/v1/markets/{market:str}/trades", dependencies=PUBLIC, tags=["markets"],
     responses=error_responses(400, 404), sync_to_thread=False)  # fmt: skip
def list_trades(
    ctx: Context,
    market: str,
    limit: Limit = 100,
    before_seq: Annotated[int | None, Parameter(ge=1, le=2**63 - 1)] = None,
) -> schemas.TradePage:
    """Recent trades, newest first; page with ``before_seq=next_cursor``."""
    m = market_of(ctx, market)
    with ctx.readmodel.read() as model:
        trades = model.trade_log(m.symbol).before(before_seq, limit + 1)
    more = len(trades) > limit
    trades = trades[:limit]
    return schemas.TradePage(
        items=[schemas.from_trade(m, t) for t in trades],
        next_cursor=str(trades[-1].seq) if more else None,
    )


@get("/v1/markets/{market:str}/candles", dependencies=PUBLIC, tags=["markets"],
     responses=error_responses(400, 404), sync_to_thread=False)  # fmt: skip
def list_candles(
    ctx: Context,
    market: str,
    interval: Literal["1m", "5m", "1h"] = "1m",
    limit: Limit = 100,
) -> schemas.CandlePage:
    """OHLCV candles from trades, oldest first, ending with the newest. Intervals
    without trades are absent."""
    m = market_of(ctx, market)
    with ctx.readmodel.read() as model:
        # Candles are updated in place by the read-model thread: convert under the lock.
        items = [schemas.from_candle(m, c) for c in model.candle_list(m.symbol, interval, limit)]
    return schemas.CandlePage(items=items)
