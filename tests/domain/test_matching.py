"""The matching engine: prices, fills, time in force, STP, fees and recovery.

Most tests run through ``AuditedExchange`` so that every invariant is checked
after every command, and assert balances to the unit. BTC-USDT: tick 0.01,
step 0.0001 BTC, minimum value 5 USDT, maker 10 bps, taker 20 bps.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypton.domain.matching import BookMachine, _fits
from crypton.domain.messages import (
    FEE_ACCOUNT,
    BookOrder,
    Message,
    OrderState,
    PlaceOrder,
    Rejection,
    Settlement,
    Trade,
)

from .support import (
    BTC_USDT,
    AuditedExchange,
    Feeder,
    btc,
    cancel,
    contents,
    credit,
    last_state,
    limit,
    market_buy,
    market_sell,
    oid,
    only,
    usdt,
)

P = usdt("50000")
START_USDT = usdt("100000")
START_BTC = btc("10")


@pytest.fixture
def ex() -> AuditedExchange:
    exchange = AuditedExchange()
    for user in ("alice", "bob", "carol"):
        exchange.submit(credit(user, "USDT", START_USDT, tid=f"{user}-u"))
        exchange.submit(credit(user, "BTC", START_BTC, tid=f"{user}-b"))
    return exchange


def balances(ex: AuditedExchange, user: str) -> tuple[tuple[int, int], tuple[int, int]]:
    wallet = ex.wallet(user)
    return wallet.balance("USDT"), wallet.balance("BTC")


def trades(out: list[Message]) -> list[tuple[int, int, int, int, int]]:
    """(price, quantity, maker fee, taker fee, buyer release) of each trade."""
    return [
        (t.price, t.quantity, t.maker_fee, t.taker_fee, t.buyer_release) for t in only(out, Trade)
    ]


def test_trade_at_the_makers_price(ex: AuditedExchange) -> None:
    ex.submit(limit("bob", "s", "sell", P, btc("0.01")))
    out = ex.submit(limit("alice", "b", "buy", usdt("50100"), btc("0.01")))
    # 500 USDT at the maker's 50,000; alice held 501 + 1.002 and gets 1 back at once.
    assert trades(out) == [(P, btc("0.01"), usdt("0.5"), usdt("1"), usdt("1"))]
    trade = only(out, Trade)[0]
    assert (trade.taker_side, trade.maker_user_id, trade.taker_user_id) == ("buy", "bob", "alice")
    assert last_state(out, oid("alice", "b")).status == "FILLED"
    assert last_state(out, oid("bob", "s")).status == "FILLED"
    assert balances(ex, "alice") == ((START_USDT - usdt("501"), 0), (START_BTC + btc("0.01"), 0))
    assert balances(ex, "bob") == ((START_USDT + usdt("499.5"), 0), (START_BTC - btc("0.01"), 0))
    assert ex.wallet(FEE_ACCOUNT).balance("USDT") == (usdt("1.5"), 0)
    assert len(ex.books["BTC-USDT"].book) == 0


def test_partial_fills(ex: AuditedExchange) -> None:
    ex.submit(limit("bob", "s", "sell", P, btc("0.03")))
    out = ex.submit(limit("alice", "b", "buy", P, btc("0.01")))
    maker = last_state(out, oid("bob", "s"))
    assert (maker.status, maker.filled_quantity, maker.version) == (
        "PARTIALLY_FILLED", btc("0.01"), 3,
    )  # fmt: skip
    out = ex.submit(limit("carol", "b", "buy", P, btc("0.05")))
    taker = last_state(out, oid("carol", "b"))
    assert (taker.status, taker.filled_quantity, taker.filled_funds) == (
        "PARTIALLY_FILLED", btc("0.02"), usdt("1000"),
    )  # fmt: skip
    assert taker.fee == usdt("2")
    assert last_state(out, oid("bob", "s")).status == "FILLED"
    assert ex.depth("BTC-USDT").bids == [(P, btc("0.03"))]
    # carol holds the rest: 1500 + the whole fee reserve (5.0) minus the 2.0 fee paid.
    assert balances(ex, "carol")[0] == (START_USDT - usdt("2505"), usdt("1503"))


def test_ioc_expires_the_remainder(ex: AuditedExchange) -> None:
    ex.submit(limit("bob", "s", "sell", P, btc("0.01")))
    out = ex.submit(limit("alice", "b", "buy", P, btc("0.03"), time_in_force="IOC"))
    state = last_state(out, oid("alice", "b"))
    assert (state.status, state.reason, state.filled_quantity) == (
        "EXPIRED", "IOC: unfilled remainder expired", btc("0.01"),
    )  # fmt: skip
    assert balances(ex, "alice")[0] == (START_USDT - usdt("501"), 0)
    assert len(ex.books["BTC-USDT"].book) == 0


def test_fok_fills_in_full_across_levels(ex: AuditedExchange) -> None:
    ex.submit(limit("bob", "s1", "sell", P, btc("0.01")))
    ex.submit(limit("carol", "s2", "sell", usdt("50010"), btc("0.02")))
    out = ex.submit(limit("alice", "b", "buy", usdt("50010"), btc("0.02"), time_in_force="FOK"))
    assert [(t[0], t[1]) for t in trades(out)] == [(P, btc("0.01")), (usdt("50010"), btc("0.01"))]
    assert last_state(out, oid("alice", "b")).status == "FILLED"
    # 500 + 500.1 and the fee on the running total: ceil(1000.1 * 0.002) = 2.0002
    assert balances(ex, "alice")[0] == (START_USDT - usdt("1002.1002"), 0)


def test_fok_without_enough_liquidity_has_no_side_effects(ex: AuditedExchange) -> None:
    ex.submit(limit("bob", "s1", "sell", P, btc("0.01")))
    ex.submit(limit("carol", "s2", "sell", usdt("50010"), btc("0.02")))
    ex.submit(limit("alice", "own", "sell", usdt("50020"), btc("1")))
    before = (ex.books["BTC-USDT"].snapshot()[-1], ex.depth("BTC-USDT").asks)
    for price, stp in ((usdt("50010"), "expire_taker"), (usdt("50020"), "expire_both")):
        # Not enough below 50010; at 50020 only alice's own order, which STP would not take.
        cmd = limit("alice", f"b{price}", "buy", price, btc("0.04"), time_in_force="FOK", stp=stp)
        out = ex.submit(cmd)
        assert only(out, Trade) == []
        state = last_state(out, cmd.order_id)
        assert (state.status, state.reason) == (
            "EXPIRED",
            "FOK: not enough liquidity to fill in full",
        )
        assert [s.order_id for s in only(out, OrderState)] == [cmd.order_id] * 2
    assert (ex.books["BTC-USDT"].snapshot()[-1], ex.depth("BTC-USDT").asks) == before
    assert balances(ex, "alice") == ((START_USDT, 0), (START_BTC - btc("1"), btc("1")))


def test_fok_with_expire_maker_skips_own_orders(ex: AuditedExchange) -> None:
    ex.submit(limit("alice", "own", "sell", P, btc("0.01")))
    ex.submit(limit("bob", "s", "sell", P, btc("0.02")))
    cmd = limit("alice", "b", "buy", P, btc("0.02"), time_in_force="FOK", stp="expire_maker")
    out = ex.submit(cmd)
    assert last_state(out, oid("alice", "own")).status == "EXPIRED"
    assert last_state(out, cmd.order_id).status == "FILLED"


def test_post_only(ex: AuditedExchange) -> None:
    ex.submit(limit("bob", "s", "sell", P, btc("0.01")))
    out = ex.submit(limit("alice", "b", "buy", P, btc("0.01"), post_only=True))
    state = last_state(out, oid("alice", "b"))
    assert (state.status, state.reason) == ("REJECTED", "post-only order would take liquidity")
    assert only(out, Trade) == []
    assert balances(ex, "alice")[0] == (START_USDT, 0)
    out = ex.submit(limit("alice", "b2", "buy", P - BTC_USDT.tick, btc("0.01"), post_only=True))
    assert last_state(out, oid("alice", "b2")).status == "OPEN"


def test_market_buy_by_funds_spends_at_most_funds_and_whole_steps(ex: AuditedExchange) -> None:
    ex.submit(limit("bob", "s1", "sell", P, btc("0.01")))
    ex.submit(limit("bob", "s2", "sell", usdt("50010"), btc("1")))
    out = ex.submit(market_buy("alice", "m", usdt("700")))
    # 0.01 at 50,000 costs 500 + 1 fee; of the 199 left, 0.0039 at 50,010 costs
    # 195.039 + 0.390078 (fee on the running total); 0.0040 would cost 200.04.
    assert [(t[0], t[1], t[3]) for t in trades(out)] == [
        (P, btc("0.01"), usdt("1")),
        (usdt("50010"), btc("0.0039"), usdt("0.390078")),
    ]
    state = last_state(out, oid("alice", "m"))
    assert (state.status, state.reason, state.filled_quantity) == ("FILLED", None, btc("0.0139"))
    assert (state.filled_funds, state.fee) == (usdt("695.039"), usdt("1.390078"))
    assert balances(ex, "alice") == (
        (START_USDT - usdt("696.429078"), 0),
        (START_BTC + btc("0.0139"), 0),
    )


def test_market_buy_too_small_for_one_step(ex: AuditedExchange) -> None:
    ex.submit(limit("bob", "s", "sell", usdt("60000"), btc("1")))
    out = ex.submit(market_buy("alice", "m", usdt("6")))  # 0.0001 costs 6 + 0.012
    state = last_state(out, oid("alice", "m"))
    assert (state.status, state.reason) == ("EXPIRED", "funds buy less than one quantity step")
    assert balances(ex, "alice")[0] == (START_USDT, 0)


def test_market_buy_runs_out_of_liquidity(ex: AuditedExchange) -> None:
    ex.submit(limit("bob", "s", "sell", P, btc("0.01")))
    out = ex.submit(market_buy("alice", "m", usdt("1000")))
    state = last_state(out, oid("alice", "m"))
    assert (state.status, state.reason, state.filled_quantity) == (
        "EXPIRED", "no more liquidity", btc("0.01"),
    )  # fmt: skip
    assert balances(ex, "alice")[0] == (START_USDT - usdt("501"), 0)


def test_market_sell(ex: AuditedExchange) -> None:
    ex.submit(limit("bob", "b1", "buy", P, btc("0.01")))
    ex.submit(limit("carol", "b2", "buy", usdt("49990"), btc("0.02")))
    out = ex.submit(market_sell("alice", "m", btc("0.02")))
    # Fee on the running total: ceil((500 + 499.9) * 0.002) = 1.9998.
    assert trades(out) == [
        (P, btc("0.01"), usdt("0.5"), usdt("1"), 0),
        (usdt("49990"), btc("0.01"), usdt("0.4999"), usdt("0.9998"), 0),
    ]
    assert last_state(out, oid("alice", "m")).status == "FILLED"
    assert balances(ex, "alice") == (
        (START_USDT + usdt("999.9") - usdt("1.9998"), 0),
        (START_BTC - btc("0.02"), 0),
    )
    out = ex.submit(market_sell("alice", "m2", btc("0.05")))
    state = last_state(out, oid("alice", "m2"))
    assert (state.status, state.reason, state.filled_quantity) == (
        "EXPIRED", "no more liquidity", btc("0.01"),
    )  # fmt: skip
    assert balances(ex, "alice")[1] == (START_BTC - btc("0.03"), 0)


def test_stp_expire_taker(ex: AuditedExchange) -> None:
    ex.submit(limit("alice", "s", "sell", P, btc("0.01")))
    out = ex.submit(limit("alice", "b", "buy", P, btc("0.01")))
    state = last_state(out, oid("alice", "b"))
    assert (state.status, state.reason) == ("EXPIRED", "self-trade prevented")
    assert [s.order_id for s in only(out, OrderState)] == [oid("alice", "b")] * 2
    assert ex.depth("BTC-USDT").asks == [(P, btc("0.01"))]
    assert balances(ex, "alice") == ((START_USDT, 0), (START_BTC - btc("0.01"), btc("0.01")))


def test_stp_expire_maker(ex: AuditedExchange) -> None:
    ex.submit(limit("alice", "s", "sell", P, btc("0.01")))
    ex.submit(limit("bob", "s", "sell", P, btc("0.01")))
    out = ex.submit(limit("alice", "b", "buy", P, btc("0.02"), stp="expire_maker"))
    maker = last_state(out, oid("alice", "s"))
    assert (maker.status, maker.reason) == ("EXPIRED", "self-trade prevented")
    assert [t.maker_order_id for t in only(out, Trade)] == [oid("bob", "s")]
    assert last_state(out, oid("alice", "b")).status == "PARTIALLY_FILLED"  # rests 0.01
    assert balances(ex, "alice")[1] == (START_BTC + btc("0.01"), 0)


def test_stp_expire_both(ex: AuditedExchange) -> None:
    ex.submit(limit("bob", "s0", "sell", P, btc("0.01")))
    ex.submit(limit("alice", "s", "sell", P, btc("0.01")))
    ex.submit(limit("bob", "s1", "sell", P, btc("0.01")))
    out = ex.submit(limit("alice", "b", "buy", P, btc("0.03"), stp="expire_both"))
    assert [t.maker_order_id for t in only(out, Trade)] == [oid("bob", "s0")]
    assert last_state(out, oid("alice", "s")).status == "EXPIRED"
    taker = last_state(out, oid("alice", "b"))
    assert (taker.status, taker.reason, taker.filled_quantity) == (
        "EXPIRED", "self-trade prevented", btc("0.01"),
    )  # fmt: skip
    assert ex.depth("BTC-USDT").asks == [(P, btc("0.01"))]  # bob's s1 still rests


def test_cancel_of_a_filled_order_is_rejected(ex: AuditedExchange) -> None:
    ex.submit(limit("bob", "s", "sell", P, btc("0.01")))
    ex.submit(limit("alice", "b", "buy", P, btc("0.01")))
    out = ex.submit(cancel("bob", "s"))
    assert [(r.ref, r.reason) for r in only(out, Rejection)] == [
        (oid("bob", "s"), "order is not open")
    ]
    # The book says the same when the cancel crosses the fill on the log.
    machine = BookMachine(BTC_USDT)
    feed = Feeder(machine)
    feed.order(limit("bob", "s", "sell", P, btc("0.01")), btc("0.01"))
    feed.order(limit("alice", "b", "buy", P, btc("0.01")), usdt("501"))
    out = feed.cancel("bob", oid("bob", "s"))
    assert out == [Rejection(user_id="bob", command="cancel_order", ref=oid("bob", "s"),
                             reason="order is not open", ts=0,
                             reason_code="order_not_open")]  # fmt: skip


def test_a_cancel_from_another_user_leaves_the_order_alone() -> None:
    machine = BookMachine(BTC_USDT)
    feed = Feeder(machine)
    feed.order(limit("bob", "s", "sell", P, btc("0.01")), btc("0.01"))
    out = feed.cancel("mallory", oid("bob", "s"))
    assert [r.reason for r in only(out, Rejection)] == ["order is not open"]
    assert [o.order_id for o in machine.book.resting()] == [oid("bob", "s")]
    assert machine.depth(5, 0).asks == [(P, btc("0.01"))]
    out = feed.cancel("bob", oid("bob", "s"))
    assert last_state(out, oid("bob", "s")).status == "CANCELED"
    assert [(m.user_id, m.order_id, m.closed) for m in only(out, Settlement)] == [
        ("bob", oid("bob", "s"), True)
    ]


def test_fees_on_the_running_total_never_exceed_the_hold(ex: AuditedExchange) -> None:
    # Fifty asks of one step at 50,000.01: each fill is worth 5.000001 and carries
    # 0.010000002 of taker fee. Rounding each fill up would charge 50 x 0.010001 =
    # 0.50005, more than the 0.500001 the buy reserved; the running total charges
    # exactly ceil(250.00005 * 0.002) = 0.500001.
    price = usdt("50000.01")
    for i in range(50):
        ex.submit(limit("bob", f"s{i}", "sell", price, btc("0.0001")))
    out = ex.submit(limit("alice", "b", "buy", price, btc("0.005")))
    assert len(only(out, Trade)) == 50
    state = last_state(out, oid("alice", "b"))
    assert (state.status, state.fee, state.filled_funds) == ("FILLED", 500_001, 250_000_050)
    assert sum(t.taker_fee for t in only(out, Trade)) == 500_001
    assert balances(ex, "alice")[0] == (START_USDT - 250_000_050 - 500_001, 0)
    # Bob was maker fifty times on separate orders: 0.005000001 rounds up to 0.005001 each.
    assert sum(t.maker_fee for t in only(out, Trade)) == 50 * 5001


def test_maker_fee_on_the_running_total(ex: AuditedExchange) -> None:
    price = usdt("50000.01")
    ex.submit(limit("bob", "b", "buy", price, btc("0.02")))
    for i in range(200):
        ex.submit(market_sell("alice", f"m{i}", btc("0.0001")))
    fills = [t for t in only(ex.history, Trade) if t.maker_order_id == oid("bob", "b")]
    assert len(fills) == 200
    # 200 fills of 5.000001 at 10 bps: ceil(1000.0002 * 0.001) = 1.000001, not 200 x 0.005001.
    assert sum(t.maker_fee for t in fills) == 1_000_001
    state = last_state(ex.history, oid("bob", "b"))
    assert (state.status, state.fee, state.version) == ("FILLED", 1_000_001, 202)
    assert balances(ex, "bob") == (
        (START_USDT - 1_000_000_200 - 1_000_001, 0),
        (START_BTC + btc("0.02"), 0),
    )


def test_buyer_release_refunds_price_improvement_exactly(ex: AuditedExchange) -> None:
    ex.submit(limit("bob", "s1", "sell", P, btc("0.01")))
    ex.submit(limit("carol", "s2", "sell", usdt("50050"), btc("0.01")))
    out = ex.submit(limit("alice", "b", "buy", usdt("50100"), btc("0.03")))
    assert [t[4] for t in trades(out)] == [usdt("1"), usdt("0.5")]
    # Held 1503 + 3.006 fee reserve; paid 500 + 500.5 + fees 2.001; 0.01 rests at 50,100 and
    # keeps 501 + the unused fee reserve 1.005 held.
    assert balances(ex, "alice")[0] == (
        START_USDT - usdt("1506.006") + usdt("1.5"),
        usdt("1506.006") - usdt("1000.5") - usdt("1.5") - usdt("2.001"),
    )
    assert ex.wallet("alice").balance("USDT")[1] == usdt("501") + usdt("1.005")
    out = ex.submit(cancel("alice", "b"))
    assert balances(ex, "alice")[0] == (START_USDT - usdt("1000.5") - usdt("2.001"), 0)


# --- recovery -------------------------------------------------------------------------


def _script() -> list[PlaceOrder | str]:
    users = ["u0", "u1", "u2", "u3"]
    steps: list[PlaceOrder | str] = []
    for i in range(60):
        user = users[i % 4]
        side = "buy" if i % 3 else "sell"
        price = P + (i % 7 - 3) * usdt("10")
        if i % 5 == 4:
            steps.append(oid(users[(i + 1) % 4], f"o{i - 3}"))
        elif i % 11 == 10:
            steps.append(market_sell(user, f"o{i}", btc("0.003")))
        elif i % 13 == 12:
            steps.append(market_buy(user, f"o{i}", usdt("300")))
        else:
            tif = "IOC" if i % 9 == 8 else "GTC"
            quantity = btc("0.002") * (1 + i % 3)
            # Both kinds of snapshot row: an order of the defaults packs short, one with
            # another self-trade rule keeps its whole command.
            stp = "expire_maker" if i % 2 else "expire_taker"
            steps.append(limit(user, f"o{i}", side, price, quantity, time_in_force=tif, stp=stp))
    return steps


def _run(feed: Feeder, steps: list[PlaceOrder | str]) -> list[Message]:
    out: list[Message] = []
    for item in steps:
        if isinstance(item, PlaceOrder):
            hold = usdt("100000") if item.side == "buy" else (item.quantity or 0)
            out += feed.order(item, hold)
        else:
            out += feed.cancel(item.split("/")[0], item)
    return out


@pytest.mark.parametrize("cut", [10, 25, 40])
def test_snapshot_restore_mid_book_gives_identical_outputs(cut: int) -> None:
    steps = _script()
    original = Feeder(BookMachine(BTC_USDT))
    _run(original, steps[:cut])
    assert len(original.machine.book) >= 3
    resting = original.machine.book.orders.values()
    assert {_fits(order, BTC_USDT.symbol) for order in resting} == {True, False}
    snapshot = original.machine.snapshot()
    restored = Feeder(BookMachine.restore(snapshot, BTC_USDT))
    restored.seq = dict(original.seq)
    first = _run(original, steps[cut:])
    second = _run(restored, steps[cut:])
    assert len(only(first, Trade)) > 3
    assert msgspec.json.encode(first) == msgspec.json.encode(second)
    assert contents(original.machine) == contents(restored.machine)


@pytest.mark.parametrize("orders", [1, 4, 10**6])
def test_a_book_packed_ahead_in_slices_restores_exactly(orders: int) -> None:
    """``warm`` packs a book's levels ahead, about ``orders`` resting orders a call and
    a level at least, while the book keeps trading between calls; the snapshot after it
    (packing again only what changed since) restores exactly the book it was taken of,
    and a finished pass leaves every level packed."""
    steps = _script()
    original = Feeder(BookMachine(BTC_USDT))
    book = original.machine.book
    passes = sliced = 0
    for i in range(0, 40, 2):
        _run(original, steps[i : i + 2])
        unpacked = _unpacked(original.machine)
        passes += original.machine.warm(orders)
        if orders == 1 and len(unpacked) > 1:
            assert len(_unpacked(original.machine)) == len(unpacked) - 1  # one level a call
            sliced += 1
    assert passes > 0 and len(book) >= 3 and (sliced > 0 or orders > 1)
    snapshot = original.machine.snapshot()
    restored = Feeder(BookMachine.restore(snapshot, BTC_USDT))
    restored.seq = dict(original.seq)
    assert contents(original.machine) == contents(restored.machine)
    first, second = _run(original, steps[40:]), _run(restored, steps[40:])
    assert msgspec.json.encode(first) == msgspec.json.encode(second)
    while not original.machine.warm(orders):
        pass
    assert _unpacked(original.machine) == []


def _unpacked(machine: BookMachine) -> list[int]:
    """The prices of the levels ``snapshot`` would pack again."""
    return [
        level.price
        for side in ("buy", "sell")
        for level in machine.book.levels_from_best(side)
        if level.packed is None
    ]


@settings(max_examples=100, deadline=None)
@given(
    asks=st.lists(st.tuples(st.integers(1, 50), st.integers(1, 30)), min_size=1, max_size=6),
    funds=st.integers(usdt("5"), usdt("20000")),
)
def test_market_buy_by_funds_property(asks: list[tuple[int, int]], funds: int) -> None:
    """Spent (value + fee) <= funds, whole steps only, and one more step would not fit."""
    machine = BookMachine(BTC_USDT)
    feed = Feeder(machine)
    for i, (ticks, steps) in enumerate(asks):
        price = usdt("50000") + ticks * usdt("0.37")
        feed.order(limit(f"s{i}", "s", "sell", price, steps * BTC_USDT.step), 0)
    out = feed.order(market_buy("buyer", "m", funds), funds)
    fills = [t for t in only(out, Trade) if t.taker_user_id == "buyer"]
    spent = sum(t.notional + t.taker_fee for t in fills)
    assert spent <= funds
    assert all(t.quantity % BTC_USDT.step == 0 for t in fills)
    state = last_state(out, oid("buyer", "m"))
    assert state.filled_funds + state.fee == spent
    if machine.book.best_ask() is not None:  # stopped by funds, not liquidity
        ask = machine.book.best_ask()
        assert ask is not None
        value = sum(t.notional for t in fills) + BTC_USDT.notional(ask, BTC_USDT.step)
        assert value + BTC_USDT.fee(value, BTC_USDT.taker_fee_bps) > funds


def test_a_second_order_with_a_resting_order_id_is_rejected_and_released() -> None:
    """Only a stray producer could send this; the resting order must stay cancellable."""
    machine = BookMachine(BTC_USDT)

    def book_order(user: str, seq: int, price: int) -> BookOrder:
        cmd = PlaceOrder(
            user_id=user,
            order_id="same",
            client_order_id="c",
            market="BTC-USDT",
            side="buy",
            type="limit",
            price=price,
            quantity=10_000,
            ts=seq,
        )
        return BookOrder(market="BTC-USDT", src=user, seq=seq, order=cmd, hold=1)

    machine.handle(book_order("a", 1, 40_000 * 10**6))
    out = machine.handle(book_order("b", 1, 41_000 * 10**6))
    (release, state) = out
    assert state.status == "REJECTED" and state.reason == "duplicate order id"  # type: ignore[attr-defined]
    assert isinstance(release, Settlement) and release.user_id == "b" and release.closed
    assert machine.book.orders["same"].user_id == "a"
    assert machine.book.best_bid() == 40_000 * 10**6


# --- bounded sequencing: the book forgets idle users ------------------------------------

T0 = 1_700_000_000_000
WINDOW = 600_000


def _ioc(user: str, cid: str, ts: int, seq: int, prev: int, side: str = "buy") -> BookOrder:
    """A wallet's ``seq``-th message: an IOC order with nothing to meet, so it expires."""
    cmd = limit(user, cid, side, P, btc("0.01"), ts=ts, time_in_force="IOC")  # type: ignore[arg-type]
    return BookOrder(market="BTC-USDT", src=user, seq=seq, order=cmd, hold=usdt("501"), prev=prev)


def test_the_book_forgets_idle_users_and_still_drops_their_old_messages() -> None:
    book = BookMachine(BTC_USDT)
    old = _ioc("u", "a", T0, seq=1, prev=0)
    (release,) = only(book.handle(old), Settlement)
    assert (release.seq, release.prev, release.closed) == (1, 0, True)
    for i in range(1, 40):  # other users trade for 39 minutes; u is quiet
        book.handle(_ioc(f"x{i}", "o", T0 + i * 60_000, seq=1, prev=0))
    assert "u" not in book.inbound.applied and "u" not in book.outbound.last
    snapshot = book.snapshot()
    assert book.handle(old) == []  # a replay of u's old order: stale, never matched again
    assert book.inbound.stale == 1
    assert book.snapshot()[:4] == snapshot[:4]  # nothing applied
    # u comes back: the wallet links to its last message; the book starts a new chain.
    back = _ioc("u", "b", T0 + 40 * 60_000, seq=7, prev=1)
    (release,) = only(book.handle(back), Settlement)
    assert release.prev == 0 and release.seq == book.outbound.count
    assert book.handle(back) == []  # and a repeat of it is dropped as such
    assert book.inbound.stale == 1


def test_a_gap_still_parks_until_filled() -> None:
    book = BookMachine(BTC_USDT)
    book.handle(_ioc("u", "a", T0, seq=1, prev=0))
    assert book.handle(_ioc("u", "c", T0 + 2, seq=5, prev=3)) == []  # 3 is missing
    assert book.inbound.gaps == 1
    out = book.handle(_ioc("u", "b", T0 + 1, seq=3, prev=1))
    assert [r.order_id for r in only(out, Settlement)] == [oid("u", "b"), oid("u", "c")]
    assert book.inbound.gaps == 0


def test_a_books_sequencing_state_is_bounded_by_its_active_users() -> None:
    """100,000 users, one order each, 100 ms apart: the book remembers at most the
    users of the last two windows (here a maker's sells meet every buy)."""
    book = BookMachine(BTC_USDT)
    book.handle(BookOrder(market="BTC-USDT", src="maker", seq=1, hold=btc("2000"), prev=0,
                          order=limit("maker", "m", "sell", P, btc("2000"), ts=T0)))  # fmt: skip
    out: list[Message] = []
    most = 0
    for i in range(100_000):
        book.apply(_ioc(f"u{i}", "o", T0 + i * 100, seq=1, prev=0), out.append, out.append)
        most = max(most, len(book.inbound.applied), len(book.outbound.last))
        if i % 1000 == 0:
            book.flush(out.append)
            out.clear()
    assert most <= 2 * WINDOW // 100 + 2
    assert len(only(out, Settlement)) > 0
    assert book.trade_seq == 100_000
