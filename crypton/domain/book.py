"""The order book of one market: price levels in price-time priority.

Prices per side sit in a ``SortedList`` (O(log n) to add a level, O(1) best
price, top-N by slicing); each level is a FIFO ``deque`` of resting orders,
so time priority is arrival order. Cancel is O(1): the order is marked dead
and its quantity leaves the level at once; the dead entry is dropped when it
reaches the front, or when dead entries outnumber live ones.

>>> book = OrderBook()
>>> book.best_bid() is None
True
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from sortedcontainers import SortedList

from crypton.domain.messages import OrderStatus, PlaceOrder
from crypton.domain.money import fee_ceil

__all__ = ["Level", "OrderBook", "RestingOrder"]

# Rebuild a level's queue when this many dead entries outnumber live ones: cheap
# enough to run rarely, small enough that a level churned by cancels stays small.
_COMPACT_AFTER = 32


class RestingOrder:
    """An order the book knows: what was asked, and how much of it is done."""

    __slots__ = (
        "cmd",
        "fee",
        "fee_num",
        "filled_funds",
        "filled_quantity",
        "hold",
        "live",
        "order_id",
        "price",
        "reason",
        "remaining",
        "side",
        "spent",
        "status",
        "updated_at",
        "user_id",
        "version",
    )

    def __init__(self, cmd: PlaceOrder, hold: int) -> None:
        self.cmd = cmd
        self.order_id = cmd.order_id
        self.user_id = cmd.user_id
        self.side = cmd.side
        self.price = cmd.price  # None for market orders, which never rest
        self.remaining = cmd.quantity or 0  # market buys by funds track ``spent`` instead
        self.hold = hold
        self.spent = 0
        self.filled_quantity = 0
        self.filled_funds = 0
        self.fee = 0
        # Fees are charged on the running total (fee_num / 10_000, rounded up once)
        # so that many small fills never cost more than one large one: the hold
        # reserved for the fee is then always enough.
        self.fee_num = 0
        self.version = 1  # NEW, from the wallet
        self.status: OrderStatus = "NEW"
        self.reason: str | None = None
        self.updated_at = cmd.ts
        self.live = True

    def charge(self, quantity: int, value: int, bps: int) -> int:
        """Record a fill of ``quantity`` worth ``value`` at ``bps``; return its fee."""
        self.remaining -= quantity
        self.filled_quantity += quantity
        self.filled_funds += value
        self.fee_num += value * bps
        total = fee_ceil(self.fee_num)
        fee = total - self.fee
        self.fee = total
        return fee


class Level:
    __slots__ = ("dead", "live", "orders", "packed", "price", "quantity")

    def __init__(self, price: int) -> None:
        self.price = price
        self.orders: deque[RestingOrder] = deque()
        self.quantity = 0
        self.live = 0
        self.dead = 0
        # The level as ``BookMachine.snapshot`` last packed it; None once anything in
        # it changed. Whatever changes a level or its orders resets it.
        self.packed: object | None = None

    def front(self) -> RestingOrder:
        """The oldest live order; the level must have one."""
        orders = self.orders
        while not orders[0].live:
            orders.popleft()
            self.dead -= 1
        return orders[0]


class OrderBook:
    """Both sides of one market's book."""

    def __init__(self) -> None:
        self.levels: dict[str, dict[int, Level]] = {"buy": {}, "sell": {}}
        self.prices: dict[str, SortedList] = {"buy": SortedList(), "sell": SortedList()}
        self.orders: dict[str, RestingOrder] = {}
        # The best level of each side, kept as levels come and go: the matching loop
        # asks for it before every fill, and indexing a SortedList runs Python code.
        self.best: dict[str, Level | None] = {"buy": None, "sell": None}

    def __len__(self) -> int:
        return len(self.orders)

    def best_bid(self) -> int | None:
        level = self.best["buy"]
        return level.price if level else None

    def best_ask(self) -> int | None:
        level = self.best["sell"]
        return level.price if level else None

    def best_level(self, side: str) -> Level | None:
        """The best level of ``side`` ("buy" = bids, "sell" = asks)."""
        return self.best[side]

    def levels_from_best(self, side: str) -> Iterator[Level]:
        prices = self.prices[side]
        ordered = reversed(prices) if side == "buy" else iter(prices)
        book_side = self.levels[side]
        for price in ordered:
            yield book_side[price]

    def rest(self, order: RestingOrder) -> None:
        """Put ``order`` at the back of its price level."""
        assert order.price is not None
        side = self.levels[order.side]
        level = side.get(order.price)
        if level is None:
            level = side[order.price] = Level(order.price)
            self.prices[order.side].add(order.price)
            best = self.best[order.side]
            if best is None or (
                order.price > best.price if order.side == "buy" else order.price < best.price
            ):
                self.best[order.side] = level
        level.orders.append(order)
        level.quantity += order.remaining
        level.live += 1
        level.packed = None
        self.orders[order.order_id] = order

    def fill_front(self, level: Level, order: RestingOrder, quantity: int) -> None:
        """Take ``quantity``, already charged to ``order`` (the level's front), off the level."""
        level.quantity -= quantity
        level.packed = None
        if order.remaining == 0:
            level.orders.popleft()
            self.unlink(level, order)

    def remove(self, order_id: str) -> RestingOrder | None:
        """Take a resting order out of the book (cancel, expiry); None if not resting."""
        order = self.orders.get(order_id)
        if order is None:
            return None
        assert order.price is not None
        level = self.levels[order.side][order.price]
        level.quantity -= order.remaining
        level.dead += 1
        level.packed = None
        self.unlink(level, order)
        if level.live and level.dead > _COMPACT_AFTER and level.dead > level.live:
            level.orders = deque(o for o in level.orders if o.live)
            level.dead = 0
        return order

    def unlink(self, level: Level, order: RestingOrder) -> None:
        """Forget ``order``, already out of (or dead in) ``level``'s queue; drop an empty level."""
        order.live = False
        level.live -= 1
        del self.orders[order.order_id]
        if level.live == 0:
            del self.levels[order.side][level.price]
            prices = self.prices[order.side]
            prices.remove(level.price)
            if self.best[order.side] is level:
                price = (prices[-1] if order.side == "buy" else prices[0]) if prices else None
                self.best[order.side] = None if price is None else self.levels[order.side][price]

    def depth(self, levels: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Top ``levels`` of bids (best first) and asks (best first) as (price, quantity)."""
        bids = self.prices["buy"]
        asks = self.prices["sell"]
        bid_side, ask_side = self.levels["buy"], self.levels["sell"]
        start = max(len(bids) - levels, 0)
        top_bids = [(p, bid_side[p].quantity) for p in bids.islice(start, reverse=True)]
        top_asks = [(p, ask_side[p].quantity) for p in asks.islice(0, levels)]
        return top_bids, top_asks

    def resting(self) -> Iterator[RestingOrder]:
        """Every live order, bids then asks, each in priority order."""
        for side in ("buy", "sell"):
            for level in self.levels_from_best(side):
                for order in level.orders:
                    if order.live:
                        yield order
