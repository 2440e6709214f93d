"""The order book of one market: price levels in price-time priority.

Prices per side sit in a sorted list with the best last (``BookSide``: the C
``bisect`` finds a new level's place, and levels come and go mostly at the touch,
at the end of the list, where nothing moves); each level is a first-in first-out
queue of resting orders (``Level``), so time priority is arrival order. Cancel is
O(1): the order is marked dead and its quantity leaves the level at once; the dead
entry is dropped when it reaches the front, or when dead entries outnumber live
ones.

>>> book = OrderBook()
>>> book.best_bid() is None
True
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator
from typing import Final

from msgspec.structs import astuple

from crypton.domain.messages import (
    OrderState,
    OrderStatus,
    OrderType,
    PlaceOrder,
    SelfTradePrevention,
    Side,
    Stamp,
    TimeInForce,
)
from crypton.domain.money import BPS
from crypton.domain.orders import code_of

__all__ = ["BookSide", "Level", "OrderBook", "RestingOrder"]

# Compiled (``make mypyc``), a name imported from an interpreted module (``messages``,
# msgspec) is looked up in this module's dict at each use; a ``Final`` alias is a C
# static. The hot path builds and reads messages through these.
_astuple: Final = astuple
_OrderState: Final = OrderState

# Rebuild a level's queue when this many dead entries outnumber live ones: cheap
# enough to run rarely, small enough that a level churned by cancels stays small.
_COMPACT_AFTER: Final = 32


class RestingOrder:
    """An order the book knows: what was asked, and how much of it is done.

    The terms are copied out of the command once, as plain attributes: the matching
    loop and every state record read them, and reading a field of the command by name
    costs the compiled core (``make mypyc``) a lookup each time.
    """

    __slots__ = (
        "client_order_id",
        "cmd",
        "created_at",
        "fee",
        "fee_num",
        "filled_funds",
        "filled_quantity",
        "funds",
        "hold",
        "live",
        "market",
        "order_id",
        "pending",
        "post_only",
        "price",
        "quantity",
        "reason",
        "remaining",
        "side",
        "spent",
        "status",
        "stp",
        "time_in_force",
        "type",
        "updated_at",
        "user_id",
        "version",
    )

    def __init__(self, cmd: PlaceOrder, hold: int) -> None:
        self.cmd = cmd
        user_id: str
        order_id: str
        client_order_id: str
        market: str
        side: Side
        kind: OrderType
        price: int | None  # None for market orders, which never rest
        quantity: int | None  # None for market buys by funds, which track ``spent``
        funds: int | None
        time_in_force: TimeInForce
        post_only: bool
        stp: SelfTradePrevention
        ts: Stamp
        (_v, user_id, order_id, client_order_id, market, side, kind, price, quantity, funds,
         time_in_force, post_only, stp, ts) = _astuple(cmd)  # fmt: skip
        self.user_id = user_id
        self.order_id = order_id
        self.client_order_id = client_order_id
        self.market = market
        self.side = side
        self.type = kind
        self.price = price
        self.quantity = quantity
        self.funds = funds
        self.time_in_force = time_in_force
        self.post_only = post_only
        self.stp = stp
        self.created_at: Stamp = ts
        # Declared: inferred, it was an object, and every fill compared and subtracted
        # it through Python's generic number protocol (compiled).
        self.remaining: int = quantity or 0
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
        self.updated_at: Stamp = ts
        self.live = True
        self.pending = False  # changed since its owner last published its state

    def charge(self, quantity: int, value: int, bps: int) -> int:
        """Record a fill of ``quantity`` worth ``value`` at ``bps``; return its fee."""
        self.remaining -= quantity
        self.filled_quantity += quantity
        self.filled_funds += value
        fee_num = self.fee_num = self.fee_num + value * bps
        total = -(-fee_num // BPS)  # fee_ceil
        fee = total - self.fee
        self.fee = total
        return fee

    def state(self) -> OrderState:
        """The order's state record as it stands (``crypton.domain.orders.order_state``)."""
        return _OrderState(
            self.order_id, self.user_id, self.client_order_id, self.market, self.side,
            self.type, self.price, self.quantity, self.funds, self.time_in_force,
            self.post_only, self.stp, self.status, self.created_at, self.updated_at,
            self.version, self.reason, self.filled_quantity, self.filled_funds, self.fee,
            code_of(self.reason),
        )  # fmt: skip


class Level:
    """The orders resting at one price, in time priority.

    The queue is a list read from ``head``: taking the front moves ``head`` on, and
    the list sheds what is behind it once that is half of it (a ``deque`` costs a
    64-slot block to make and a protocol call to index, compiled).
    """

    __slots__ = ("dead", "head", "live", "packed", "price", "quantity", "queue")

    def __init__(self, price: int) -> None:
        self.price = price
        self.queue: list[RestingOrder] = []
        self.head = 0  # the front of the queue; what is before it has left
        self.quantity = 0
        self.live = 0
        self.dead = 0
        # The level as ``BookMachine.snapshot`` last packed it; None once anything in
        # it changed. Whatever changes a level or its orders resets it.
        self.packed: object | None = None

    @property
    def orders(self) -> list[RestingOrder]:
        """The queue from its front, canceled entries not yet dropped included."""
        return self.queue[self.head :]

    def front(self) -> RestingOrder:
        """The oldest live order; the level must have one."""
        queue = self.queue
        while not queue[self.head].live:
            self.pop_front()
            self.dead -= 1
        return queue[self.head]

    def pop_front(self) -> None:
        """Take the front of the queue off."""
        head = self.head = self.head + 1
        if head > _COMPACT_AFTER and head + head > len(self.queue):
            del self.queue[:head]
            self.head = 0


class BookSide:
    """One side of a book: its levels by price, its prices in order, and its best level.

    The order is kept as sort keys with the best last: a bid's key is its price, an
    ask's the negated price, so both sides are one ascending list for the C ``bisect``
    (O(log n) to find a new level's place, then a move of the keys behind it: none at
    the touch, where most levels come and go).
    """

    __slots__ = ("best", "buying", "keys", "levels")

    def __init__(self, buying: bool) -> None:
        self.buying = buying
        self.levels: dict[int, Level] = {}
        self.keys: list[int] = []
        # Kept as levels come and go: the matching loop asks for it before every fill.
        self.best: Level | None = None

    @property
    def prices(self) -> list[int]:
        """The prices of the levels, the best last."""
        return self.keys if self.buying else [-key for key in self.keys]

    def add(self, price: int) -> Level:
        """A new, empty level at ``price``."""
        level = self.levels[price] = Level(price)
        keys = self.keys
        key = price if self.buying else -price
        if not keys or key > keys[-1]:
            keys.append(key)
            self.best = level
        else:
            insort(keys, key)
        return level

    def drop(self, level: Level) -> None:
        """Forget an empty ``level``."""
        price = level.price
        levels = self.levels
        del levels[price]
        keys = self.keys
        key = price if self.buying else -price
        if keys[-1] == key:  # the best level emptied: the usual case
            keys.pop()
            self.best = levels[keys[-1] if self.buying else -keys[-1]] if keys else None
        else:
            del keys[bisect_left(keys, key)]

    def from_best(self) -> Iterator[Level]:
        levels, sign = self.levels, 1 if self.buying else -1
        for key in reversed(self.keys):
            yield levels[sign * key]

    def top(self, count: int) -> list[tuple[int, int]]:
        """(price, quantity) of the best ``count`` levels, best first."""
        levels, sign = self.levels, 1 if self.buying else -1
        return [(sign * k, levels[sign * k].quantity) for k in self.keys[: -count - 1 : -1]]


class OrderBook:
    """Both sides of one market's book."""

    def __init__(self) -> None:
        self.bids = BookSide(buying=True)
        self.asks = BookSide(buying=False)
        self.orders: dict[str, RestingOrder] = {}

    def side(self, side: str) -> BookSide:
        """The side ``side`` names: "buy" the bids, "sell" the asks."""
        return self.bids if side == "buy" else self.asks

    @property
    def levels(self) -> dict[str, dict[int, Level]]:
        """Each side's levels by price, by side name."""
        return {"buy": self.bids.levels, "sell": self.asks.levels}

    @property
    def prices(self) -> dict[str, list[int]]:
        """Each side's prices with the best last, by side name."""
        return {"buy": self.bids.prices, "sell": self.asks.prices}

    @property
    def best(self) -> dict[str, Level | None]:
        """Each side's best level, by side name."""
        return {"buy": self.bids.best, "sell": self.asks.best}

    def __len__(self) -> int:
        return len(self.orders)

    def best_bid(self) -> int | None:
        level = self.bids.best
        return level.price if level else None

    def best_ask(self) -> int | None:
        level = self.asks.best
        return level.price if level else None

    def best_level(self, side: str) -> Level | None:
        """The best level of ``side`` ("buy" = bids, "sell" = asks)."""
        return self.side(side).best

    def levels_from_best(self, side: str) -> Iterator[Level]:
        return self.side(side).from_best()

    def rest(self, order: RestingOrder) -> None:
        """Put ``order`` at the back of its price level."""
        price = order.price
        assert price is not None
        book_side = self.bids if order.side == "buy" else self.asks
        level = book_side.levels.get(price)
        if level is None:
            level = book_side.add(price)
        level.queue.append(order)
        level.quantity += order.remaining
        level.live += 1
        level.packed = None
        self.orders[order.order_id] = order

    def fill_front(self, level: Level, order: RestingOrder, quantity: int) -> None:
        """Take ``quantity``, already charged to ``order`` (the level's front), off the level."""
        level.quantity -= quantity
        level.packed = None
        if order.remaining == 0:
            level.pop_front()
            self.unlink(level, order)

    def remove(self, order_id: str) -> RestingOrder | None:
        """Take a resting order out of the book (cancel, expiry); None if not resting."""
        order = self.orders.get(order_id)
        if order is None:
            return None
        assert order.price is not None
        level = (self.bids if order.side == "buy" else self.asks).levels[order.price]
        level.quantity -= order.remaining
        level.dead += 1
        level.packed = None
        self.unlink(level, order)
        if level.live and level.dead > _COMPACT_AFTER and level.dead > level.live:
            level.queue = [o for o in level.orders if o.live]
            level.head = level.dead = 0
        return order

    def unlink(self, level: Level, order: RestingOrder) -> None:
        """Forget ``order``, already out of (or dead in) ``level``'s queue; drop an empty level."""
        order.live = False
        level.live -= 1
        del self.orders[order.order_id]
        if level.live == 0:
            (self.bids if order.side == "buy" else self.asks).drop(level)

    def depth(self, levels: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Top ``levels`` of bids (best first) and asks (best first) as (price, quantity)."""
        return self.bids.top(levels), self.asks.top(levels)

    def resting(self) -> Iterator[RestingOrder]:
        """Every live order, bids then asks, each in priority order."""
        for side in ("buy", "sell"):
            for level in self.levels_from_best(side):
                for order in level.orders:
                    if order.live:
                        yield order
