"""OHLCV candles folded from trades, exact integers throughout.

A candle covers ``[start, start + interval)`` of trade time. Open and close are
the prices of the lowest and highest trade sequence in the bucket, not of the
first and last trade applied, so a trade that arrives late (a replay filling a
gap) still lands where it belongs.

>>> from crypton.domain.messages import Trade
>>> def trade(seq: int, price: int, time: int) -> Trade:
...     return Trade(market="BTC-USDT", seq=seq, price=price, quantity=1, notional=price,
...                  taker_side="buy", maker_order_id="m", taker_order_id="t",
...                  maker_user_id="a", taker_user_id="b", maker_fee=0, taker_fee=0,
...                  buyer_release=0, time=time)
>>> series = CandleSeries(60_000)
>>> for t in (trade(1, 10, 0), trade(2, 12, 1_000), trade(3, 9, 61_000)):
...     _ = series.add(t)
>>> [(c.start, c.open, c.high, c.low, c.close, c.trades) for c in series.last(10)]
[(0, 10, 12, 10, 12, 2), (60000, 9, 9, 9, 9, 1)]
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Final

from crypton.domain.messages import Trade

__all__ = ["INTERVALS", "WEEK_ORIGIN", "Candle", "CandleSeries", "candle_start"]

_DAY: Final = 86_400_000
INTERVALS: Final = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "4h": 4 * 3_600_000,
    "1d": _DAY,
    "1w": 7 * _DAY,
}
"""The candle intervals served, in milliseconds. Candles are aligned on the Unix epoch
(UTC midnight for ``1d``), weeks on Mondays (``WEEK_ORIGIN``) as exchanges do."""
WEEK_ORIGIN: Final = 4 * _DAY
"""1970-01-05, the first Monday of the epoch: where weekly candles start."""


def candle_start(time: int, interval_ms: int, origin_ms: int = 0) -> int:
    """The start of the candle of ``interval_ms`` that covers ``time``.

    >>> candle_start(61_000, 60_000), candle_start(WEEK_ORIGIN + 1, INTERVALS["1w"], WEEK_ORIGIN)
    (60000, 345600000)
    """
    return time - (time - origin_ms) % interval_ms


@dataclass(slots=True)
class Candle:
    start: int
    open: int
    high: int
    low: int
    close: int
    volume: int
    """Base units traded."""
    quote_volume: int
    """Quote units traded (the trades' notional)."""
    trades: int
    first_seq: int
    last_seq: int

    @classmethod
    def of(cls, start: int, trade: Trade) -> Candle:
        return cls(
            start=start,
            open=trade.price,
            high=trade.price,
            low=trade.price,
            close=trade.price,
            volume=trade.quantity,
            quote_volume=trade.notional,
            trades=1,
            first_seq=trade.seq,
            last_seq=trade.seq,
        )

    def add(self, trade: Trade) -> None:
        self.high = max(self.high, trade.price)
        self.low = min(self.low, trade.price)
        self.volume += trade.quantity
        self.quote_volume += trade.notional
        self.trades += 1
        if trade.seq < self.first_seq:
            self.first_seq, self.open = trade.seq, trade.price
        if trade.seq > self.last_seq:
            self.last_seq, self.close = trade.seq, trade.price


class CandleSeries:
    """The candles of one market at one interval. Callers add each trade exactly once
    (the read model dedupes trades by sequence before they get here)."""

    def __init__(self, interval_ms: int, origin_ms: int = 0) -> None:
        self.interval_ms = interval_ms
        self.origin_ms = origin_ms
        self._starts: list[int] = []
        self._candles: dict[int, Candle] = {}

    def add(self, trade: Trade) -> Candle:
        start = candle_start(trade.time, self.interval_ms, self.origin_ms)
        candle = self._candles.get(start)
        if candle is None:
            candle = self._candles[start] = Candle.of(start, trade)
            # Trades arrive in time order almost always, so this is an append.
            if not self._starts or start > self._starts[-1]:
                self._starts.append(start)
            else:
                bisect.insort(self._starts, start)
        else:
            candle.add(trade)
        return candle

    def last(self, limit: int, *, before: int | None = None) -> list[Candle]:
        """Up to ``limit`` candles, oldest first, ending with the newest one that starts
        before ``before`` (or the newest of all). Intervals with no trade are absent."""
        end = len(self._starts) if before is None else bisect.bisect_left(self._starts, before)
        return [self._candles[s] for s in self._starts[max(0, end - limit) : end]]

    def between(self, start: int | None, end: int | None, limit: int) -> list[Candle]:
        """Up to ``limit`` candles starting in ``[start, end)``, oldest first: from
        ``start`` on when it is given, else the newest ones before ``end``."""
        if start is None:
            return self.last(limit, before=end)
        first = bisect.bisect_left(self._starts, start)
        stop = len(self._starts) if end is None else bisect.bisect_left(self._starts, end)
        return [self._candles[s] for s in self._starts[first : min(stop, first + limit)]]

    def since(self, start: int) -> list[Candle]:
        """Every candle starting at or after ``start``, oldest first."""
        first = bisect.bisect_left(self._starts, start)
        return [self._candles[s] for s in self._starts[first:]]

    def __len__(self) -> int:
        return len(self._starts)
