"""The queryable view of the state topics: hot state in memory, the rest in the store.

Every API replica folds ``crypton.orders``, ``balances``, ``trades``, ``depth``,
``transfers`` and ``users`` into its view store (``crypton.viewstore``, SQLite),
each record by its topic's rule, declared once in ``crypton.schema`` and
shared with ``crypton.views`` (the audit's fold):

* upserts keep the highest ``version`` per key (``seq`` for depth), so a
  replayed older state never overwrites a newer one;
* trades are deduplicated by ``(market, seq)``: the first wins;
* a transfer's outcome is final: the first record for a key wins.

The dataflow's sink is at-least-once and the embedded brokers never compact, so
the fold tolerates duplicates and stale records in any amount. What the store
accepted also updates the little that is kept in memory: open orders, the
latest depth, a window of recent trades per market. Memory and start-up
therefore follow what is live, not the length of the history.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar

from sortedcontainers import SortedList

from crypton import schema
from crypton.candles import Candle
from crypton.domain.messages import (
    TERMINAL,
    BalanceState,
    DepthState,
    OrderState,
    Side,
    Trade,
    TransferState,
)
from crypton.users import UserState
from crypton.viewstore import Offsets, ViewStore

__all__ = ["Fill", "Page", "ReadModel", "Ticker", "TradeLog"]

TRADE_WINDOW: Final = 100_000
"""Trades kept in memory per market for listing and stream resume; candles and fills
come from the store and cover every trade."""

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

    @classmethod
    def restore(cls, trades: Iterable[Trade], window: int = TRADE_WINDOW) -> TradeLog:
        """The window of the newest ``trades`` (oldest first), as after adding them all."""
        log = cls(window)
        for trade in trades:
            log.add(trade)
        if log._seqs:
            # Older trades exist in the store, not here: a resume from before must resync.
            log.evicted_through = max(log.evicted_through, log._seqs[0] - 1)
        return log

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
    """Orders, balances, transfers, depth, trades, fills, candles and users: what must be
    hot in memory (open orders, depth, a window of recent trades per market), everything
    else in the view's store (``crypton.viewstore``), which folds every record first and
    decides whether it changed anything.

    Not thread-safe: the API's read model serialises every call with its lock.
    """

    def __init__(self, store: ViewStore | None = None, *, trade_window: int = TRADE_WINDOW):
        self.store = store if store is not None else ViewStore.memory()
        self.trade_window = trade_window
        self._open: dict[str, OrderState] = {}
        """Orders not yet in a final status, by id."""
        self._user_open: dict[str, SortedList] = {}
        self.depth: dict[str, DepthState] = {}
        self.trades: dict[str, TradeLog] = {}

    def load(self) -> ReadModel:
        """Bring what must be hot from the store into memory (after a restart)."""
        for state in self.store.open_orders():
            self._track(state)
        self.depth = {d.market: d for d in self.store.depths()}
        for market in self.store.trade_markets():
            self.trades[market] = TradeLog.restore(
                self.store.trades_newest(market, self.trade_window), self.trade_window
            )
        return self

    # --- folding ------------------------------------------------------------------

    def apply(self, record: Any) -> bool:
        """Fold one state record of any topic; return whether it changed the view."""
        return self.apply_batch([record], {})[0]

    apply_order = apply_balance = apply_transfer = apply_depth = apply_trade = apply_user = apply

    def apply_batch(
        self, records: Sequence[Any], offsets: Offsets, raws: Sequence[bytes | None] = ()
    ) -> list[bool]:
        """Fold ``records`` (in log order) and the consumed ``offsets`` into the store in
        one transaction, then update what is hot; per record, whether it changed the view."""
        changed = self.store.apply(records, offsets, raws)
        for record, accepted in zip(records, changed, strict=True):
            if accepted:
                hot = _HOT.get(type(record))
                if hot is not None:
                    hot(self, record)
        return changed

    def _track(self, state: OrderState) -> None:
        """Keep ``state`` in memory while the order is open, drop it when it closes."""
        old = self._open.pop(state.order_id, None)
        if old is not None:
            self._user_open[old.user_id].discard((old.created_at, old.order_id))
        if state.status not in TERMINAL:
            self._open[state.order_id] = state
            self._index(self._user_open, state.user_id).add((state.created_at, state.order_id))

    @staticmethod
    def _index(indexes: dict[str, SortedList], user: str) -> SortedList:
        index = indexes.get(user)
        if index is None:
            index = indexes[user] = SortedList()
        return index

    def _add_trade(self, trade: Trade) -> None:
        log = self.trades.get(trade.market)
        if log is None:
            log = self.trades[trade.market] = TradeLog(self.trade_window)
        log.add(trade)

    def _set_depth(self, state: DepthState) -> None:
        self.depth[state.market] = state

    # --- queries ------------------------------------------------------------------

    def user(self, user_id: str) -> UserState | None:
        return self.store.user(user_id)

    def user_by_key_hash(self, digest: str) -> str | None:
        owner = self.store.key(digest)
        return None if owner is None else owner[0]

    def key_by_hash(self, digest: str) -> tuple[str, tuple[str, ...]] | None:
        """The user and scopes of a valid key."""
        return self.store.key(digest)

    def balance(self, user_id: str) -> BalanceState | None:
        return self.store.balance(user_id)

    def transfer(self, user_id: str, transfer_id: str) -> TransferState | None:
        """The outcome of a credit or debit, however old: what makes a retry harmless."""
        return self.store.transfer(user_id, transfer_id)

    def order(self, order_id: str) -> OrderState | None:
        return self._open.get(order_id) or self.store.order(order_id)

    def order_of(self, user_id: str, order_id: str) -> OrderState | None:
        """The order if it exists *and* belongs to ``user_id``: other users' orders
        are indistinguishable from missing ones."""
        state = self.order(order_id)
        return state if state is not None and state.user_id == user_id else None

    def order_by_client_id(self, user_id: str, client_order_id: str) -> OrderState | None:
        """The order of any age placed with this client order id: an idempotent retry
        is answered from it however long ago the first attempt was."""
        return self.store.order_by_client_id(user_id, client_order_id)

    def client_order_id(self, order_id: str) -> str | None:
        state = self.order(order_id)
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
        states = (self._open[order_id] for _, order_id in keys)
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
        """The user's orders, newest first, ``limit`` at a time after ``cursor``: open
        ones from memory, the whole history from the store."""
        if open_only:
            items = self._open_before(user_id, market, cursor, limit + 1)
        else:
            items = self.store.orders_before(user_id, market, cursor, limit + 1)
        if len(items) <= limit:
            return Page(items, None)
        last = items[limit - 1]
        return Page(items[:limit], f"{last.created_at}.{last.order_id}")

    def _open_before(
        self, user_id: str, market: str | None, cursor: OrderKey | None, limit: int
    ) -> list[OrderState]:
        index = self._user_open.get(user_id)
        if index is None:
            return []
        position = (len(index) if cursor is None else index.bisect_left(cursor)) - 1
        items: list[OrderState] = []
        while position >= 0 and len(items) < limit:
            state = self._open[index[position][1]]
            if market is None or state.market == market:
                items.append(state)
            position -= 1
        return items

    def fills(
        self, user_id: str, *, market: str | None, limit: int, cursor: tuple[int, str, int] | None
    ) -> Page[Fill]:
        """The user's fills, newest first, from the whole trade history."""
        rows = self.store.trades_of_user(user_id, market, cursor, limit + 1)
        items = [self.fills_of_trade(trade)[role == "taker"] for role, trade in rows]
        if len(items) <= limit:
            return Page(items, None)
        t = items[limit - 1].trade
        return Page(items[:limit], f"{t.time}.{t.market}.{t.seq}")

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
        return self.store.candles(market, interval, start, end, limit)

    def ticker(self, market: str, now: int) -> Ticker:
        """The last 24 hours of ``market`` (``TICKER_WINDOW``), folded from its 1-minute
        candles: the window moves a minute at a time."""
        # Every minute that overlaps the window: starts after now - window - 1 minute.
        candles = self.store.candles(market, "1m", now - TICKER_WINDOW - 59_999, None, 2_000)
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


_HOT: Final[dict[type[Any], Callable[[ReadModel, Any], None]]] = {
    OrderState: ReadModel._track,
    Trade: ReadModel._add_trade,
    DepthState: ReadModel._set_depth,
}
"""What a record that changed the view changes in memory (the rest lives in the store)."""


def _rule(spec: schema.TopicSpec) -> schema.Fold:
    assert spec.fold is not None, f"{spec.logical} is not a state topic"
    return spec.fold


_TRADES: Final = _rule(schema.TRADES)
