"""The order book: price-time priority, O(1) cancel, depth, compaction."""

from __future__ import annotations

from crypton.domain.book import _COMPACT_AFTER, OrderBook, RestingOrder
from crypton.domain.invariants import book_problems
from crypton.domain.markets import parse_markets
from crypton.domain.matching import BookMachine

from .support import limit

# Whole units and a tick and step of one keep the numbers readable.
UNITS = parse_markets(
    {"assets": {"A": 0, "Q": 0}, "markets": {"A-Q": {"tick": "1", "step": "1"}}}
).market("A-Q")


def resting(user: str, cid: str, side: str, price: int, quantity: int) -> RestingOrder:
    return RestingOrder(limit(user, cid, side, price, quantity, market="A-Q"), hold=0)


def machine_with(*orders: RestingOrder) -> BookMachine:
    machine = BookMachine(UNITS)
    for order in orders:
        machine.book.rest(order)
    return machine


def ids(book: OrderBook) -> list[str]:
    return [o.order_id for o in book.resting()]


def test_empty_book() -> None:
    book = OrderBook()
    assert (book.best_bid(), book.best_ask(), len(book)) == (None, None, 0)
    assert book.best_level("buy") is None
    assert book.depth(5) == ([], [])
    assert book.remove("nothing") is None


def test_price_time_priority() -> None:
    machine = machine_with(
        resting("a", "1", "buy", 100, 5),
        resting("b", "2", "buy", 101, 1),
        resting("c", "3", "buy", 100, 2),
        resting("d", "4", "sell", 103, 7),
        resting("e", "5", "sell", 102, 3),
        resting("f", "6", "sell", 102, 4),
    )
    book = machine.book
    assert (book.best_bid(), book.best_ask()) == (101, 102)
    # Bids best first (highest price, then oldest), then asks best first.
    assert ids(book) == ["b/2", "a/1", "c/3", "e/5", "f/6", "d/4"]
    level = book.best_level("sell")
    assert level is not None
    assert (level.price, level.quantity, level.front().order_id) == (102, 7, "e/5")
    assert [lv.price for lv in book.levels_from_best("buy")] == [101, 100]
    assert book_problems(machine) == []


def test_cancel_leaves_levels_consistent() -> None:
    orders = [resting("u", str(i), "buy", 100, i + 1) for i in range(4)]
    machine = machine_with(*orders, resting("v", "x", "buy", 99, 1))
    book = machine.book
    removed = book.remove("u/1")
    assert removed is orders[1]
    assert not removed.live
    level = book.levels["buy"][100]
    assert (level.quantity, level.live, level.dead) == (1 + 3 + 4, 3, 1)
    assert book.remove("u/1") is None  # once only
    assert ids(book) == ["u/0", "u/2", "u/3", "v/x"]
    assert book_problems(machine) == []
    # Cancelling the front: front() skips the dead entry.
    book.remove("u/0")
    assert level.front().order_id == "u/2"
    assert (level.live, level.dead) == (2, 0)  # front() dropped both dead entries
    # Cancelling the last orders of a level drops the level and its price.
    book.remove("u/2")
    book.remove("u/3")
    assert 100 not in book.levels["buy"]
    assert list(book.prices["buy"]) == [99]
    assert book.best_bid() == 99
    assert book_problems(machine) == []


def test_fill_front_takes_the_maker_off_when_done() -> None:
    maker, second = resting("u", "1", "sell", 100, 5), resting("u", "2", "sell", 100, 5)
    machine = machine_with(maker, second)
    book = machine.book
    level = book.levels["sell"][100]
    maker.charge(2, 0, 0)
    book.fill_front(level, maker, 2)
    assert (level.quantity, level.front() is maker) == (8, True)
    maker.charge(3, 0, 0)
    book.fill_front(level, maker, 3)
    assert (level.quantity, level.front() is second, len(book)) == (5, True, 1)
    assert "u/1" not in book.orders
    assert book_problems(machine) == []


def test_depth_top_n() -> None:
    machine = machine_with(
        *[resting("b", f"b{p}", "buy", p, p) for p in (10, 30, 20, 40)],
        resting("b", "b30x", "buy", 30, 5),
        *[resting("s", f"s{p}", "sell", p, 1) for p in (50, 70, 60)],
    )
    book = machine.book
    assert book.depth(2) == ([(40, 40), (30, 35)], [(50, 1), (60, 1)])
    assert book.depth(10) == ([(40, 40), (30, 35), (20, 20), (10, 10)], [(50, 1), (60, 1), (70, 1)])
    assert book.depth(0) == ([], [])
    state = machine.depth(1, ts=9)
    assert (state.bids, state.asks, state.seq, state.ts) == ([(40, 40)], [(50, 1)], 0, 9)


def test_compaction_of_dead_entries() -> None:
    n = 3 * _COMPACT_AFTER
    machine = machine_with(*[resting("u", str(i), "buy", 100, 1) for i in range(n)])
    book = machine.book
    level = book.levels["buy"][100]
    # Cancel everything but the first and the last order, from the back.
    for i in range(n - 2, 0, -1):
        book.remove(f"u/{i}")
        assert book_problems(machine) == []
        assert level.dead <= max(_COMPACT_AFTER, level.live) + 1
    assert len(level.orders) < n - 2  # dead entries were dropped along the way
    assert [o.order_id for o in level.orders if o.live] == ["u/0", f"u/{n - 1}"]
    assert (level.quantity, level.live) == (2, 2)
    assert ids(book) == ["u/0", f"u/{n - 1}"]


def test_book_problems_sees_a_crossed_or_inconsistent_book() -> None:
    bid, ask = resting("a", "1", "buy", 102, 5), resting("b", "2", "sell", 101, 5)
    machine = machine_with(bid, ask)
    assert book_problems(machine) == ["A-Q: book crossed, best bid 102 >= best ask 101"]
    machine = machine_with(resting("a", "1", "buy", 100, 10_000))
    machine.book.levels["buy"][100].quantity += 1
    machine.book.orders["a/1"].filled_quantity = 10_000
    assert book_problems(machine) == [
        "A-Q buy 100: quantity 10001, orders sum 10000",
        "A-Q buy 100 order a/1: filled 10000 + remaining 10000 != quantity 10000",
    ]
