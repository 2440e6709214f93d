"""The queryable view of the state topics: a pure, in-memory fold with no I/O.

Every API replica builds one by replaying ``crypton.orders``, ``balances``,
``trades``, ``depth``, ``transfers`` and ``users`` from the beginning. The
dataflow's sink is at-least-once and the embedded brokers never compact, so
the fold must tolerate duplicates and stale records in any amount:

each record is folded by its topic's rule, declared once in ``crypton.schema``
and shared with ``crypton.views`` (the audit's fold):

* upserts keep the highest ``version`` per key (``seq`` for depth), so a
  replayed older state never overwrites a newer one;
* trades are deduplicated by ``(market, seq)``: the first wins (a sequence
  that has left the trade window counts as seen);
* a transfer's outcome is final: the first record for a key wins.

``apply`` (or the ``apply_*`` of one type) returns whether the record changed
the view, which is what push streams and waiters react to.

>>> from crypton.domain.messages import BalanceState, Balance
>>> model = ReadModel()
>>> model.apply_balance(BalanceState(user_id="a", version=2, balances={}, ts=0))
True
>>> model.apply_balance(BalanceState(user_id="a", version=1, balances={}, ts=0))
False
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar

from sortedcontainers import SortedList

from crypton import schema
from crypton.candles import INTERVALS, WEEK_ORIGIN, Candle, CandleSeries
from crypton.domain.messages import (
    TERMINAL,
    BalanceState,
    DepthState,
    OrderState,
    Side,
    Trade,
    TransferState,
)
from crypton.users import UserState, key_table

__all__ = ["Fill", "Page", "ReadModel", "Ticker", "TradeLog"]

TRADE_WINDOW: Final = 100_000
"""Trades kept per market for listing and stream resume; candles cover all of them."""
FILL_WINDOW: Final = 10_000
"""Fills kept per user."""

T = TypeVar("T")
OrderKey = tuple[int, str]  # (created_at, order_id): newest-first listing, stable cursors


@dataclass(frozen=True, slots=True)
class Fill:
    """One side of a trade, as the user who owns that side sees it."""

    trade: Trade
    user_id: str
    order_id: str
    side: Side
    liquidity: Literal["maker", "taker"]
    fee: int

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.trade.time, self.trade.market, self.trade.seq)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


TICKER_WINDOW: Final = 86_400_000
"""What a ticker covers: the last 24 hours."""


@dataclass(frozen=True, slots=True)
class Ticker:
    """A market's last price and its last 24 hours, in integer units."""

    last: int | None
    open: int | None
    high: int | None
    low: int | None
    volume: int
    quote_volume: int
    trades: int


class TradeLog:
    """The recent trades of one market, deduplicated by sequence."""

    def __init__(self, window: int = TRADE_WINDOW) -> None:
        self.window = window
        self.last_seq = 0
        """The highest sequence applied."""
        self.evicted_through = 0
        """Every sequence at or below this has left the window."""
        self._seqs: deque[int] = deque()
        self._trades: dict[int, Trade] = {}

    def add(self, trade: Trade) -> bool:
        seq = trade.seq
        if seq <= self.evicted_through or not _TRADES.accepts(self._trades.get(seq), trade):
            return False
        self._trades[seq] = trade
        if seq > self.last_seq:
            self.last_seq = seq
            self._seqs.append(seq)
        else:
            # A late trade filling a gap: keep the deque sorted (rare, so O(n) is fine).
            items = sorted([*self._seqs, seq])
            self._seqs = deque(items)
        while len(self._seqs) > self.window:
            old = self._seqs.popleft()
            del self._trades[old]
            self.evicted_through = max(self.evicted_through, old)
        return True

    def before(self, before_seq: int | None, limit: int) -> list[Trade]:
        """Up to ``limit`` trades with ``seq < before_seq``, newest first."""
        out: list[Trade] = []
        for seq in reversed(self._seqs):
            if before_seq is not None and seq >= before_seq:
                continue
            out.append(self._trades[seq])
            if len(out) >= limit:
                break
        return out

    def newest(self) -> Trade | None:
        return self._trades[self._seqs[-1]] if self._seqs else None

    def forward(
        self, since: int | None, after_seq: int | None, limit: int, before_seq: int | None = None
    ) -> list[Trade]:
        """Up to ``limit`` trades with ``time >= since`` and ``after_seq < seq <
        before_seq``, oldest first: how a client pages forward from a moment."""
        out: list[Trade] = []
        for seq in self._seqs:
            if after_seq is not None and seq <= after_seq:
                continue
            if before_seq is not None and seq >= before_seq:
                break
            trade = self._trades[seq]
            if since is not None and trade.time < since:
                continue
            out.append(trade)
            if len(out) >= limit:
                break
        return out

    def after(self, seq: int) -> list[Trade] | None:
        """Every trade with a sequence above ``seq``, oldest first; ``None`` if some of
        them already left the window (the caller must resynchronise)."""
        if seq < self.evicted_through:
            return None
        out = []
        for s in reversed(self._seqs):
            if s <= seq:
                break
            out.append(self._trades[s])
        out.reverse()
        return out


class ReadModel:
    """Orders, balances, transfers, depth, trades, fills, candles and users."""

    def __init__(self, *, trade_window: int = TRADE_WINDOW, fill_window: int = FILL_WINDOW):
        self.trade_window = trade_window
        self.fill_window = fill_window
        self.orders: dict[str, OrderState] = {}
        self._user_orders: dict[str, SortedList] = {}
        self._user_open: dict[str, SortedList] = {}
        self._client_ids: dict[tuple[str, str], str] = {}
        self.balances: dict[str, BalanceState] = {}
        self.transfers: dict[tuple[str, str], TransferState] = {}
        self.depth: dict[str, DepthState] = {}
        self.trades: dict[str, TradeLog] = {}
        self._fills: dict[str, SortedList] = {}
        self.candles: dict[tuple[str, str], CandleSeries] = {}
        self.users: dict[str, UserState] = {}
        self._key_owner: dict[str, tuple[str, tuple[str, ...]]] = {}

    # --- folding ------------------------------------------------------------------

    def apply(self, record: Any) -> bool:
        """Fold one state record of any topic; return whether it changed the view."""
        return _FOLDS[type(record)](self, record)

    def apply_order(self, state: OrderState) -> bool:
        old = self.orders.get(state.order_id)
        if not _ORDERS.accepts(old, state):
            return False
        self.orders[state.order_id] = state
        user = state.user_id
        key: OrderKey = (state.created_at, state.order_id)
        was_open = False
        if old is not None:
            old_key: OrderKey = (old.created_at, old.order_id)
            was_open = old.status not in TERMINAL
            if old_key != key or old.user_id != user:  # never in practice; stay correct
                self._user_orders[old.user_id].discard(old_key)
                if was_open:
                    self._user_open[old.user_id].discard(old_key)
                old = None
                was_open = False
        if old is None:
            self._index(self._user_orders, user).add(key)
        is_open = state.status not in TERMINAL
        if is_open and not was_open:
            self._index(self._user_open, user).add(key)
        elif was_open and not is_open:
            self._user_open[user].discard(key)
        self._client_ids[(user, state.client_order_id)] = state.order_id
        return True

    @staticmethod
    def _index(indexes: dict[str, SortedList], user: str) -> SortedList:
        index = indexes.get(user)
        if index is None:
            index = indexes[user] = SortedList()
        return index

    def apply_balance(self, state: BalanceState) -> bool:
        if not _BALANCES.accepts(self.balances.get(state.user_id), state):
            return False
        self.balances[state.user_id] = state
        return True

    def apply_transfer(self, state: TransferState) -> bool:
        key = (state.user_id, state.transfer_id)
        if not _TRANSFERS.accepts(self.transfers.get(key), state):
            return False
        self.transfers[key] = state
        return True

    def apply_depth(self, state: DepthState) -> bool:
        if not _DEPTH.accepts(self.depth.get(state.market), state):
            return False
        self.depth[state.market] = state
        return True

    def apply_trade(self, trade: Trade) -> bool:
        log = self.trades.get(trade.market)
        if log is None:
            log = self.trades[trade.market] = TradeLog(self.trade_window)
        if not log.add(trade):
            return False
        for name, interval in INTERVALS.items():
            series = self.candles.get((trade.market, name))
            if series is None:
                origin = WEEK_ORIGIN if name == "1w" else 0
                series = self.candles[(trade.market, name)] = CandleSeries(interval, origin)
            series.add(trade)
        for fill in self.fills_of_trade(trade):
            self._add_fill(fill)
        return True

    def _add_fill(self, fill: Fill) -> None:
        fills = self._fills.get(fill.user_id)
        if fills is None:
            fills = self._fills[fill.user_id] = SortedList(key=lambda f: f.key)
        fills.add(fill)
        if len(fills) > self.fill_window:
            del fills[0]

    def apply_user(self, state: UserState) -> bool:
        """Highest version wins; of two records with the same version (two replicas
        creating one id at once) the first in the log wins."""
        old = self.users.get(state.user_id)
        if not _USERS.accepts(old, state):
            return False
        if old is not None:
            for digest in key_table(old):
                self._key_owner.pop(digest, None)
        self.users[state.user_id] = state
        for digest, key in key_table(state).items():
            self._key_owner[digest] = (state.user_id, key.scopes)
        return True

    # --- queries ------------------------------------------------------------------

    def user_by_key_hash(self, digest: str) -> str | None:
        owner = self._key_owner.get(digest)
        return None if owner is None else owner[0]

    def key_by_hash(self, digest: str) -> tuple[str, tuple[str, ...]] | None:
        """The user and scopes of a valid key."""
        return self._key_owner.get(digest)

    def order_of(self, user_id: str, order_id: str) -> OrderState | None:
        """The order if it exists *and* belongs to ``user_id``: other users' orders
        are indistinguishable from missing ones."""
        state = self.orders.get(order_id)
        return state if state is not None and state.user_id == user_id else None

    def order_by_client_id(self, user_id: str, client_order_id: str) -> OrderState | None:
        order_id = self._client_ids.get((user_id, client_order_id))
        return None if order_id is None else self.orders.get(order_id)

    def client_order_id(self, order_id: str) -> str | None:
        state = self.orders.get(order_id)
        return None if state is None else state.client_order_id

    def fills_of_trade(self, trade: Trade) -> list[Fill]:
        """The two sides of ``trade`` (maker first), as their owners see them."""
        maker_side: Side = "sell" if trade.taker_side == "buy" else "buy"
        return [
            Fill(trade, trade.maker_user_id, trade.maker_order_id, maker_side, "maker",
                 trade.maker_fee),
            Fill(trade, trade.taker_user_id, trade.taker_order_id, trade.taker_side, "taker",
                 trade.taker_fee),
        ]  # fmt: skip

    def open_orders(self, user_id: str, market: str | None = None) -> list[OrderState]:
        keys = self._user_open.get(user_id, ())
        states = (self.orders[order_id] for _, order_id in keys)
        return [s for s in states if market is None or s.market == market]

    def list_orders(
        self,
        user_id: str,
        *,
        open_only: bool,
        market: str | None,
        limit: int,
        cursor: OrderKey | None,
    ) -> Page[OrderState]:
        """The user's orders, newest first, ``limit`` at a time after ``cursor``."""
        index = (self._user_open if open_only else self._user_orders).get(user_id)
        if index is None:
            return Page([], None)
        stop = len(index) if cursor is None else index.bisect_left(cursor)
        items: list[OrderState] = []
        last: OrderKey | None = None
        position = stop - 1
        while position >= 0 and len(items) < limit:
            key: OrderKey = index[position]
            state = self.orders[key[1]]
            if market is None or state.market == market:
                items.append(state)
                last = key
            position -= 1
        more = position >= 0 and last is not None
        return Page(items, f"{last[0]}.{last[1]}" if more and last else None)

    def fills(
        self, user_id: str, *, market: str | None, limit: int, cursor: tuple[int, str, int] | None
    ) -> Page[Fill]:
        """The user's fills, newest first."""
        index = self._fills.get(user_id)
        if index is None:
            return Page([], None)
        stop = len(index) if cursor is None else index.bisect_key_left(cursor)
        items: list[Fill] = []
        position = stop - 1
        while position >= 0 and len(items) < limit:
            fill: Fill = index[position]
            if market is None or fill.trade.market == market:
                items.append(fill)
            position -= 1
        more = position >= 0 and bool(items)
        nxt = None
        if more:
            t = items[-1].trade
            nxt = f"{t.time}.{t.market}.{t.seq}"
        return Page(items, nxt)

    def trade_log(self, market: str) -> TradeLog:
        return self.trades.get(market) or TradeLog(self.trade_window)

    def candle_list(
        self,
        market: str,
        interval: str,
        limit: int,
        *,
        start: int | None = None,
        end: int | None = None,
    ) -> list[Candle]:
        """Candles of ``market`` starting in ``[start, end)``, oldest first (``between``)."""
        series = self.candles.get((market, interval))
        return [] if series is None else series.between(start, end, limit)

    def ticker(self, market: str, now: int) -> Ticker:
        """The last 24 hours of ``market`` (``TICKER_WINDOW``), folded from its 1-minute
        candles: the window moves a minute at a time."""
        series = self.candles.get((market, "1m"))
        # Every minute that overlaps the window: starts after now - window - 1 minute.
        candles = [] if series is None else series.since(now - TICKER_WINDOW - 59_999)
        log = self.trades.get(market)
        last = log.newest() if log is not None else None
        return Ticker(
            last=None if last is None else last.price,
            open=candles[0].open if candles else None,
            high=max(c.high for c in candles) if candles else None,
            low=min(c.low for c in candles) if candles else None,
            volume=sum(c.volume for c in candles),
            quote_volume=sum(c.quote_volume for c in candles),
            trades=sum(c.trades for c in candles),
        )


def _rule(spec: schema.TopicSpec) -> schema.Fold:
    assert spec.fold is not None, f"{spec.logical} is not a state topic"
    return spec.fold


_ORDERS = _rule(schema.ORDERS)
_TRADES = _rule(schema.TRADES)
_BALANCES = _rule(schema.BALANCES)
_TRANSFERS = _rule(schema.TRANSFERS)
_DEPTH = _rule(schema.DEPTH)
_USERS = _rule(schema.USERS)

_FOLDS: dict[type[Any], Callable[[ReadModel, Any], bool]] = {
    OrderState: ReadModel.apply_order,
    BalanceState: ReadModel.apply_balance,
    Trade: ReadModel.apply_trade,
    DepthState: ReadModel.apply_depth,
    TransferState: ReadModel.apply_transfer,
    UserState: ReadModel.apply_user,
}
