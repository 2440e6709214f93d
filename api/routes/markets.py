"""Public market data: server time, rules, tickers, depth, trades and candles."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from litestar import get
from litestar.params import FromPath, FromQuery, Parameter

from crypton.candles import INTERVALS
from crypton.domain.markets import Market

from .. import schemas
from .._context import Ctx
from ..auth import PUBLIC
from ..errors import error_responses, not_found
from . import area

Limit = Annotated[int, Parameter(ge=1, le=1000, description="How many items at most")]
# Litestar drops a lower bound of 0 from the schema, so times and sequences take any
# value from -2**53 (before the first trade is as good as 0).
MillisParam = Annotated[
    int | None, Parameter(ge=-(2**53), le=2**53, description="Milliseconds since the Unix epoch")
]
Interval = Literal["1m", "5m", "15m", "1h", "4h", "1d", "1w"]
assert set(get_args(Interval)) == set(INTERVALS), "the served intervals are the folded ones"


def market_of(ctx: Ctx, symbol: str) -> Market:
    market = ctx.markets.get(symbol)
    if market is None:
        raise not_found("market", symbol)
    return market


@get("/v1/markets", responses=error_responses(),
     sync_to_thread=False)  # fmt: skip
def list_markets(ctx: Ctx) -> schemas.MarketPage:
    """Every market with its trading rules."""
    return schemas.MarketPage(items=[schemas.from_market(m) for m in ctx.markets])


@get("/v1/time", responses=error_responses(),
     sync_to_thread=False)  # fmt: skip
def server_time(ctx: Ctx) -> schemas.ServerTime:
    """The server's clock, in milliseconds since the epoch: what it stamps on orders."""
    return schemas.ServerTime(time=ctx.now_ms())


@get("/v1/tickers", responses=error_responses(),
     sync_to_thread=False)  # fmt: skip
def list_tickers(ctx: Ctx) -> schemas.TickerPage:
    """The ticker of every market."""
    now = ctx.now_ms()
    with ctx.readmodel.read() as model:
        items = [
            schemas.from_ticker(m, model.ticker(m.symbol, now), model.depth.get(m.symbol), now)
            for m in ctx.markets
        ]
    return schemas.TickerPage(items=items)


@get("/v1/markets/{market:str}/ticker", responses=error_responses(404), sync_to_thread=False)
def get_ticker(ctx: Ctx, market: FromPath[str]) -> schemas.TickerView:
    """Last price, best bid and ask, and open, high, low and volumes of the last 24 hours
    (to the minute); null where undefined."""
    m = market_of(ctx, market)
    now = ctx.now_ms()
    with ctx.readmodel.read() as model:
        return schemas.from_ticker(m, model.ticker(m.symbol, now), model.depth.get(m.symbol), now)


@get("/v1/markets/{market:str}", responses=error_responses(404), sync_to_thread=False)
def get_market(ctx: Ctx, market: FromPath[str]) -> schemas.MarketView:
    return schemas.from_market(market_of(ctx, market))


@get("/v1/markets/{market:str}/depth", responses=error_responses(400, 404), sync_to_thread=False)
def get_depth(
    ctx: Ctx,
    market: FromPath[str],
    levels: Annotated[int, Parameter(ge=1, le=1000, description="Levels per side")] = 50,
) -> schemas.DepthView:
    """Aggregated levels, best first, as of the book sequence ``seq``."""
    m = market_of(ctx, market)
    with ctx.readmodel.read() as model:
        depth = model.depth.get(m.symbol)
    return schemas.from_depth(m, depth, levels)


@get("/v1/markets/{market:str}/trades", responses=error_responses(400, 404), sync_to_thread=False)
def list_trades(
    ctx: Ctx,
    market: FromPath[str],
    limit: Limit = 100,
    before_seq: Annotated[
        int | None, Parameter(ge=1, le=2**63 - 1, description="Trades before this sequence")
    ] = None,
    since: Annotated[
        int | None,
        Parameter(
            ge=-(2**53), le=2**53, description="Trades at or after this time (ms), oldest first"
        ),
    ] = None,
    after_seq: Annotated[
        int | None,
        Parameter(
            ge=-(2**53), le=2**63 - 1, description="Trades after this sequence, oldest first"
        ),
    ] = None,
) -> schemas.TradePage:
    """Recent trades, newest first, paged with ``before_seq=next_cursor``; or, with
    ``since`` and/or ``after_seq``, the trades from then on, oldest first, paged with
    ``after_seq=next_cursor`` (``before_seq`` then bounds them above). The API keeps the
    last 100,000 trades of each market."""
    m = market_of(ctx, market)
    with ctx.readmodel.read() as model:
        log = model.trade_log(m.symbol)
        if since is not None or after_seq is not None:
            trades = log.forward(since, after_seq, limit + 1, before_seq)
        else:
            trades = log.before(before_seq, limit + 1)
    more = len(trades) > limit
    trades = trades[:limit]
    return schemas.TradePage(
        items=[schemas.from_trade(m, t) for t in trades],
        next_cursor=str(trades[-1].seq) if more else None,
    )


@get("/v1/markets/{market:str}/candles", responses=error_responses(400, 404), sync_to_thread=False)
def list_candles(
    ctx: Ctx,
    market: FromPath[str],
    interval: FromQuery[Interval] = "1m",
    limit: Limit = 100,
    start: MillisParam = None,
    end: MillisParam = None,
) -> schemas.CandlePage:
    """OHLCV candles from trades, oldest first, of the candles starting in
    ``[start, end)``: from ``start`` on when it is given, else the newest ones before
    ``end`` (or of all); none if ``end`` is not after ``start``. Intervals without trades
    are absent. Candles are aligned on
    UTC (weeks on Mondays)."""
    m = market_of(ctx, market)
    with ctx.readmodel.read() as model:
        # Candles are updated in place by the read-model thread: convert under the lock.
        candles = model.candle_list(m.symbol, interval, limit, start=start, end=end)
        items = [schemas.from_candle(m, c) for c in candles]
    return schemas.CandlePage(items=items)


router = area(
    "markets",
    [server_time, list_tickers, list_markets, get_market, get_ticker, get_depth, list_trades,
     list_candles],
    dependencies=PUBLIC,
)  # fmt: skip
