"""The invariants of DESIGN.md as pure checks: each returns a list of problems.

An empty list means the state is sound. The checks read state, never change
it, and name what is wrong in plain words, so the property tests, the
benchmark and ``crypton audit`` share one definition of "correct":

- supply: per asset, the sum of every balance (available + held, the fee
  account included) equals the accepted credits minus the accepted debits;
- no balance is negative, and each wallet's held amount per asset is the sum
  of its open holds in that asset;
- every resting order has a hold in its wallet, and every hold belongs to an
  order resting in its book (or one still in flight between the machines);
- the book is never crossed and its levels agree with their orders;
- trade sequences per market run 1, 2, 3, ... with no gap;
- order state transitions are legal.

>>> from crypton.config import load_markets
>>> from crypton.domain.exchange import Exchange
>>> from crypton.domain.messages import Credit
>>> ex = Exchange(load_markets())
>>> _ = ex.submit(Credit(user_id="a", asset="USDT", amount=100, transfer_id="t1", ts=0))
>>> exchange_problems(ex, {"USDT": 100})
[]
>>> exchange_problems(ex, {"USDT": 90})
['USDT: balances total 100, credits minus debits 90']
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Protocol

from crypton.domain.book import OrderBook, RestingOrder
from crypton.domain.markets import Market
from crypton.domain.matching import BookMachine
from crypton.domain.messages import (
    CANCELED,
    EXPIRED,
    FILLED,
    NEW,
    OPEN,
    PARTIALLY_FILLED,
    REJECTED,
    TERMINAL,
    Message,
    OrderState,
    PlaceOrder,
    Trade,
    TransferState,
)
from crypton.domain.wallet import WalletMachine

__all__ = [
    "Balances",
    "TradeSequenceAudit",
    "TransitionAudit",
    "book_problems",
    "exchange_balances",
    "exchange_problems",
    "hold_problems",
    "link_problems",
    "net_transfers",
    "supply_problems",
    "trade_problems",
    "trade_sequence_problems",
    "transition_problems",
]

Balances = Mapping[str, Mapping[str, tuple[int, int]]]
"""user id -> asset -> (available, held)."""

# Which status may follow which. A book answers a new order with its first
# state (OPEN, PARTIALLY_FILLED or a terminal one); a resting order only
# ever fills further or closes.
_NEXT: dict[str, frozenset[str]] = {
    NEW: frozenset({OPEN, PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED, REJECTED}),
    OPEN: frozenset({PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED}),
    PARTIALLY_FILLED: frozenset({PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED}),
}
_NEEDS_REASON = TERMINAL - {FILLED}
# What an order is: the terms it was placed with (the fields ``PlaceOrder`` and
# ``OrderState`` share), fixed at placement and the same in every later state.
_FIXED = (
    *(f for f in PlaceOrder.__struct_fields__ if f in OrderState.__struct_fields__ and f != "v"),
    "created_at",
)


class _Exchange(Protocol):
    """What the checks need of ``crypton.domain.exchange.Exchange``."""

    @property
    def wallets(self) -> Mapping[str, WalletMachine]: ...

    @property
    def books(self) -> Mapping[str, BookMachine]: ...


# --- balances ---------------------------------------------------------------------


def supply_problems(balances_by_user: Balances, net_transfers: Mapping[str, int]) -> list[str]:
    """Per asset, the total of all balances must equal credits minus debits.

    Also reports negative amounts: a negative balance could hide a surplus
    elsewhere in the total.

    >>> supply_problems({"a": {"BTC": (7, 3)}, "_fees": {"BTC": (0, 0)}}, {"BTC": 10})
    []
    >>> for problem in supply_problems({"a": {"BTC": (7, 3)}}, {"BTC": 11, "ETH": 1}):
    ...     print(problem)
    BTC: balances total 10, credits minus debits 11
    ETH: balances total 0, credits minus debits 1
    >>> supply_problems({"a": {"BTC": (-1, 1)}}, {})
    ['a BTC: negative balance (available -1, held 1)']
    """
    problems: list[str] = []
    totals: dict[str, int] = {}
    for user_id in sorted(balances_by_user):
        for asset, (available, held) in sorted(balances_by_user[user_id].items()):
            if available < 0 or held < 0:
                problems.append(
                    f"{user_id} {asset}: negative balance (available {available}, held {held})"
                )
            totals[asset] = totals.get(asset, 0) + available + held
    for asset in sorted(set(totals) | set(net_transfers)):
        total, expected = totals.get(asset, 0), net_transfers.get(asset, 0)
        if total != expected:
            problems.append(f"{asset}: balances total {total}, credits minus debits {expected}")
    return problems


def net_transfers(records: Iterable[Message]) -> dict[str, int]:
    """Accepted credits minus accepted debits per asset, from ``TransferState`` records.

    Other messages are skipped, so the output of ``Exchange.submit`` (or the
    balances topic's neighbour on the log) can be passed as it is.

    >>> net_transfers([
    ...     TransferState(user_id="a", transfer_id="1", direction="credit", asset="BTC",
    ...                   amount=5, status="ACCEPTED", ts=0),
    ...     TransferState(user_id="a", transfer_id="2", direction="debit", asset="BTC",
    ...                   amount=2, status="ACCEPTED", ts=0),
    ...     TransferState(user_id="a", transfer_id="3", direction="debit", asset="BTC",
    ...                   amount=9, status="REJECTED", ts=0),
    ... ])
    {'BTC': 3}
    """
    totals: dict[str, int] = {}
    for record in records:
        if isinstance(record, TransferState) and record.status == "ACCEPTED":
            sign = 1 if record.direction == "credit" else -1
            totals[record.asset] = totals.get(record.asset, 0) + sign * record.amount
    return totals


def exchange_balances(exchange: _Exchange) -> dict[str, dict[str, tuple[int, int]]]:
    """Every wallet's (available, held) per asset, in the shape ``supply_problems`` reads."""
    return {
        user_id: {asset: wallet.balance(asset) for asset in wallet.balances}
        for user_id, wallet in sorted(exchange.wallets.items())
    }


def hold_problems(wallet: WalletMachine) -> list[str]:
    """A wallet's held amount per asset must be the sum of its open holds in that asset.

    >>> from crypton.config import load_markets
    >>> w = WalletMachine("a", load_markets())
    >>> w.funds("BTC").held = 5
    >>> hold_problems(w)
    ['a BTC: held 5, open holds sum to 0']
    """
    problems: list[str] = []
    sums: dict[str, int] = {}
    for order_id, hold in wallet.holds.items():
        if hold.amount < 0:
            problems.append(f"{wallet.user_id} order {order_id}: negative hold {hold.amount}")
        sums[hold.asset] = sums.get(hold.asset, 0) + hold.amount
    for asset in sorted(set(sums) | set(wallet.balances)):
        held = wallet.balance(asset)[1]
        if held != sums.get(asset, 0):
            problems.append(
                f"{wallet.user_id} {asset}: held {held}, open holds sum to {sums.get(asset, 0)}"
            )
    return problems


# --- the book -----------------------------------------------------------------------


def book_problems(machine: BookMachine) -> list[str]:
    """One market's book: not crossed, levels consistent, resting orders sound.

    Checks that the sorted prices are exactly the levels, that each level's
    quantity and live count agree with its orders, that every live order is
    indexed (and nothing else is), and for each resting limit order that it
    rests on its own price, has ``remaining > 0`` on the step, and that
    ``filled_quantity + remaining == quantity``.

    >>> from crypton.config import load_markets
    >>> book_problems(BookMachine(load_markets().market("BTC-USDT")))
    []
    """
    market, book = machine.market, machine.book
    where = market.symbol
    problems: list[str] = []
    bid, ask = book.best_bid(), book.best_ask()
    if bid is not None and ask is not None and bid >= ask:
        problems.append(f"{where}: book crossed, best bid {bid} >= best ask {ask}")
    seen: set[str] = set()
    for side in ("buy", "sell"):
        problems += _side_problems(market, book, side, seen)
    for order_id in sorted(set(book.orders) - seen):
        problems.append(f"{where}: order {order_id} is indexed but rests on no level")
    return problems


def _side_problems(market: Market, book: OrderBook, side: str, seen: set[str]) -> list[str]:
    where = f"{market.symbol} {side}"
    problems: list[str] = []
    # The price index holds each side's prices with the best last.
    levels, prices = book.levels[side], list(book.prices[side])
    ordered = sorted(levels, reverse=side == "sell")
    if prices != ordered:
        problems.append(f"{where}: price index {prices} differs from levels {ordered}")
    top = prices[-1] if prices else None
    best = book.best[side]
    best_price = best.price if best is not None else None
    if best_price != top or (best is not None and levels.get(best.price) is not best):
        problems.append(f"{where}: best level {best_price}, best price {top}")
    for price in sorted(levels):
        level = levels[price]
        live = [o for o in level.orders if o.live]
        dead = len(level.orders) - len(live)
        if level.price != price:
            problems.append(f"{where} {price}: level says price {level.price}")
        if not live:
            problems.append(f"{where} {price}: empty level kept")
        if level.live != len(live):
            problems.append(f"{where} {price}: live count {level.live}, live orders {len(live)}")
        if level.dead != dead:
            problems.append(f"{where} {price}: dead count {level.dead}, dead entries {dead}")
        quantity = sum(o.remaining for o in live)
        if level.quantity != quantity:
            problems.append(f"{where} {price}: quantity {level.quantity}, orders sum {quantity}")
        for order in live:
            seen.add(order.order_id)
            label = f"{where} {price} order {order.order_id}"
            if book.orders.get(order.order_id) is not order:
                problems.append(f"{label}: not indexed by its id")
            if order.side != side or order.price != price:
                problems.append(f"{label}: is a {order.side} at {order.price}")
            if order.remaining <= 0:
                problems.append(f"{label}: rests with remaining {order.remaining}")
            elif order.remaining % market.step:
                problems.append(f"{label}: remaining {order.remaining} is off the step")
            quantity_asked = order.cmd.quantity
            if order.cmd.type != "limit" or quantity_asked is None:
                problems.append(f"{label}: a {order.cmd.type} order rests")
            elif order.filled_quantity + order.remaining != quantity_asked:
                problems.append(
                    f"{label}: filled {order.filled_quantity} + remaining {order.remaining}"
                    f" != quantity {quantity_asked}"
                )
    return problems


def link_problems(
    wallets: Mapping[str, WalletMachine],
    books: Mapping[str, BookMachine],
    in_flight: Collection[str] = (),
) -> list[str]:
    """Holds and resting orders must match one to one.

    Every order resting in a book has a hold in its owner's wallet, in the
    asset it spends, of exactly what its unfilled part can still cost; every
    hold belongs to an order resting in its book, unless its id is in
    ``in_flight`` (placed or closed, with the message between the machines
    not yet delivered; ``Exchange.submit`` leaves nothing in flight).
    """
    problems: list[str] = []
    resting: dict[str, str] = {}  # order id -> market
    for symbol, machine in sorted(books.items()):
        market = machine.market
        for order in machine.book.resting():
            resting[order.order_id] = symbol
            wallet = wallets.get(order.user_id)
            hold = wallet.holds.get(order.order_id) if wallet is not None else None
            label = f"{symbol} order {order.order_id} of {order.user_id}"
            if hold is None:
                problems.append(f"{label}: rests with no hold in its wallet")
                continue
            asset, amount = _hold_due(market, order.cmd.price or 0, order)
            if hold.market != symbol or hold.asset != asset:
                problems.append(f"{label}: holds {hold.asset} in {hold.market}")
            elif hold.amount != amount:
                problems.append(f"{label}: holds {hold.amount} {asset}, its rest needs {amount}")
    for user_id, wallet in sorted(wallets.items()):
        for order_id, hold in wallet.holds.items():
            if resting.get(order_id) != hold.market and order_id not in in_flight:
                problems.append(
                    f"{user_id} holds {hold.amount} {hold.asset} for order {order_id},"
                    f" which does not rest in {hold.market}"
                )
    return problems


def _hold_due(market: Market, price: int, order: RestingOrder) -> tuple[str, int]:
    """What a resting limit order's hold must still be.

    A sell holds its remaining quantity. A buy held ``notional(price, quantity)``
    plus the taker fee on it; each fill took its value at the limit (price
    improvement is refunded at once) and its fee, which leaves the notional of
    the remainder plus the part of the fee reserve not yet charged.
    """
    if order.side == "sell":
        return market.base.code, order.remaining
    quantity = order.cmd.quantity or 0
    reserve = market.fee(market.notional(price, quantity), market.taker_fee_bps)
    return market.quote.code, market.notional(price, order.remaining) + reserve - order.fee


# --- trades -------------------------------------------------------------------------


class TradeSequenceAudit:
    """Feed trades as they appear; each market's ``seq`` must run 1, 2, 3, ...

    ``last`` may start from known positions (e.g. a book's ``trade_seq`` when
    auditing from the middle of the log).

    >>> audit = TradeSequenceAudit()
    >>> audit.last["BTC-USDT"] = 41
    >>> audit.expect("BTC-USDT", 43)
    ['BTC-USDT: trade seq 43 after 41']
    """

    def __init__(self, last: Mapping[str, int] | None = None) -> None:
        self.last: dict[str, int] = dict(last or {})

    def expect(self, market: str, seq: int) -> list[str]:
        """Record ``seq`` for ``market``; a problem unless it follows the last one."""
        last = self.last.get(market, 0)
        self.last[market] = seq
        return [] if seq == last + 1 else [f"{market}: trade seq {seq} after {last}"]

    def feed(self, trade: Trade) -> list[str]:
        return self.expect(trade.market, trade.seq)


def trade_sequence_problems(trades: Iterable[Trade]) -> list[str]:
    """Each market's trades, in log order, must be numbered 1, 2, 3, ... with no gap.

    >>> def t(seq):
    ...     return Trade(market="M", seq=seq, price=1, quantity=1, notional=1,
    ...                  taker_side="buy", maker_order_id="m", taker_order_id="t",
    ...                  maker_user_id="a", taker_user_id="b", maker_fee=0, taker_fee=0,
    ...                  buyer_release=0, time=0)
    >>> trade_sequence_problems([t(1), t(2), t(4)])
    ['M: trade seq 4 after 2']
    """
    audit = TradeSequenceAudit()
    problems: list[str] = []
    for trade in trades:
        problems += audit.feed(trade)
    return problems


def trade_problems(trade: Trade, market: Market) -> list[str]:
    """One trade's arithmetic: on the tick and step, exact notional, fees within bounds,
    and two different users (self-trades are always prevented)."""
    where = f"{trade.market}#{trade.seq}"
    problems: list[str] = []
    if trade.price <= 0 or trade.price % market.tick:
        problems.append(f"{where}: price {trade.price} is off the tick")
    if trade.quantity <= 0 or trade.quantity % market.step:
        problems.append(f"{where}: quantity {trade.quantity} is off the step")
    if trade.notional != market.notional(trade.price, trade.quantity):
        problems.append(f"{where}: notional {trade.notional} is not price x quantity")
    # Fees are rounded up on each order's running total, so a fill's fee is at
    # most its own fee rounded up, and may be less (even zero).
    for name, fee, bps in (
        ("maker", trade.maker_fee, market.maker_fee_bps),
        ("taker", trade.taker_fee, market.taker_fee_bps),
    ):
        if not 0 <= fee <= market.fee(trade.notional, bps):
            problems.append(f"{where}: {name} fee {fee} outside 0..{bps} bps of the notional")
    if trade.buyer_release < 0:
        problems.append(f"{where}: negative buyer release {trade.buyer_release}")
    if trade.maker_user_id == trade.taker_user_id:
        problems.append(f"{where}: {trade.maker_user_id} traded with itself")
    return problems


# --- order states -------------------------------------------------------------------


class TransitionAudit:
    """Feed order states as they appear on the log; reports illegal transitions.

    Per order: the first state is NEW or REJECTED at version 1; each later
    state has the next version, a status allowed after the previous one
    (nothing after FILLED, CANCELED, REJECTED or EXPIRED), the same order
    terms, and filled quantity, funds and fee that never decrease; the filled
    quantity never exceeds the quantity and equals it when FILLED.

    >>> audit = TransitionAudit()
    >>> s = OrderState(order_id="o", user_id="u", client_order_id="c", market="M",
    ...                side="buy", type="limit", price=1, quantity=2, funds=None,
    ...                time_in_force="GTC", post_only=False, stp="expire_taker",
    ...                status="NEW", created_at=0, updated_at=0, version=1)
    >>> audit.feed(s)
    []
    >>> import msgspec
    >>> audit.feed(msgspec.structs.replace(s, status="OPEN", version=3))
    ['order o: version 3 after 1']
    """

    def __init__(self) -> None:
        self.last: dict[str, OrderState] = {}

    def feed(self, state: OrderState) -> list[str]:
        """Check ``state`` against the order's previous state and remember it."""
        problems = _state_problems(state)
        previous = self.last.get(state.order_id)
        self.last[state.order_id] = state
        where = f"order {state.order_id}"
        if previous is None:
            if state.version != 1 or state.status not in (NEW, REJECTED):
                problems.append(f"{where}: first state is {state.status} v{state.version}")
            return problems
        if state.version != previous.version + 1:
            problems.append(f"{where}: version {state.version} after {previous.version}")
        if state.status not in _NEXT.get(previous.status, ()):
            problems.append(f"{where}: {state.status} after {previous.status}")
        for name in _FIXED:
            if getattr(state, name) != getattr(previous, name):
                problems.append(f"{where}: {name} changed")
        for name in ("filled_quantity", "filled_funds", "fee"):
            if getattr(state, name) < getattr(previous, name):
                problems.append(f"{where}: {name} decreased")
        return problems


def _state_problems(state: OrderState) -> list[str]:
    where = f"order {state.order_id}"
    problems: list[str] = []
    filled, quantity = state.filled_quantity, state.quantity
    if filled < 0 or state.filled_funds < 0 or state.fee < 0:
        problems.append(f"{where}: negative fill or fee")
    if quantity is not None and filled > quantity:
        problems.append(f"{where}: filled {filled} of {quantity}")
    if state.status == FILLED and (filled == 0 or (quantity is not None and filled != quantity)):
        problems.append(f"{where}: FILLED with {filled} of {quantity}")
    if state.status in (NEW, OPEN) and filled:
        problems.append(f"{where}: {state.status} with a fill of {filled}")
    if state.status == PARTIALLY_FILLED and not filled:
        problems.append(f"{where}: PARTIALLY_FILLED with nothing filled")
    if (state.status in _NEEDS_REASON) != (state.reason is not None):
        problems.append(f"{where}: {state.status} with reason {state.reason!r}")
    return problems


def transition_problems(states: Iterable[OrderState]) -> list[str]:
    """Check every order's states, given in log order (orders may interleave)."""
    audit = TransitionAudit()
    problems: list[str] = []
    for state in states:
        problems += audit.feed(state)
    return problems


# --- everything -----------------------------------------------------------------------


def exchange_problems(
    exchange: _Exchange, net_transfers: Mapping[str, int], in_flight: Collection[str] = ()
) -> list[str]:
    """All state invariants of an ``Exchange`` at rest; empty when everything holds.

    ``net_transfers`` are the accepted credits minus debits per asset (see
    ``net_transfers``). Trade sequences and order transitions are properties of
    the emitted history rather than of the state: check them with
    ``TradeSequenceAudit`` and ``TransitionAudit`` as the messages come out.
    """
    problems = supply_problems(exchange_balances(exchange), net_transfers)
    for _user_id, wallet in sorted(exchange.wallets.items()):
        problems += hold_problems(wallet)
        if wallet.inbound.gaps:
            problems.append(f"{wallet.user_id}: {wallet.inbound.gaps} messages wait on a gap")
    for _symbol, machine in sorted(exchange.books.items()):
        problems += book_problems(machine)
        if machine.inbound.gaps:
            problems.append(f"{_symbol}: {machine.inbound.gaps} messages wait on a gap")
    problems += link_problems(exchange.wallets, exchange.books, in_flight)
    return problems
