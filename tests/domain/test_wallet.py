"""The wallet machine: transfers, holds, settlement, release, recovery."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from crypton.domain.messages import (
    FEE_ACCOUNT,
    Balance,
    BalanceState,
    BookCancel,
    BookOrder,
    CancelOrder,
    Message,
    OrderState,
    PlaceOrder,
    Rejection,
    Settlement,
    TransferState,
    WalletInbox,
)
from crypton.domain.wallet import InvariantBreach, WalletMachine

from .support import (
    MARKETS,
    btc,
    cancel,
    cancel_all,
    credit,
    debit,
    limit,
    market_buy,
    oid,
    only,
    usdt,
)

PRICE = usdt("50000")


def wallet(user: str = "alice", **funds: int) -> WalletMachine:
    machine = WalletMachine(user, MARKETS)
    for asset, amount in funds.items():
        machine.handle(credit(user, asset, amount, tid=f"seed-{asset}"))
    return machine


def settle(
    user: str,
    seq: int,
    order_id: str,
    take: int = 0,
    refund: int = 0,
    receive: int = 0,
    closed: bool = False,
) -> Settlement:
    """The book's ``seq``-th message, to this wallet only (so ``prev`` is ``seq - 1``)."""
    return Settlement(user_id=user, src="BTC-USDT", seq=seq, prev=seq - 1, order_id=order_id,
                      take=take, refund=refund, receive=receive, closed=closed, ts=5)  # fmt: skip


def release(user: str, seq: int, order_id: str) -> Settlement:
    """The book closed the order with no fill in that message: release the rest."""
    return settle(user, seq, order_id, closed=True)


# --- transfers ------------------------------------------------------------------------


def test_credit_and_debit_move_available() -> None:
    w = wallet()
    out = w.handle(credit("alice", "USDT", 100, tid="t1", ts=7))
    assert out == [
        TransferState(user_id="alice", transfer_id="t1", direction="credit", asset="USDT",
                      amount=100, status="ACCEPTED", ts=7),
        BalanceState(user_id="alice", version=1, balances={"USDT": Balance(100, 0)}, ts=7),
    ]  # fmt: skip
    w.handle(debit("alice", "USDT", 30, tid="t2"))
    assert w.balance("USDT") == (70, 0)
    assert w.version == 2


def test_duplicate_transfer_id_has_no_effect() -> None:
    w = wallet()
    w.handle(credit("alice", "USDT", 100, tid="t1"))
    assert w.handle(credit("alice", "USDT", 100, tid="t1")) == []
    assert w.handle(debit("alice", "USDT", 10, tid="t1")) == []  # same id, other direction
    assert w.balance("USDT") == (100, 0)


def test_debit_of_more_than_available_is_rejected() -> None:
    w = wallet(USDT=100)
    out = w.handle(debit("alice", "USDT", 101, tid="t2"))
    assert len(out) == 1
    state = out[0]
    assert isinstance(state, TransferState)
    assert state.status == "REJECTED"
    assert state.reason == "insufficient USDT: available 0.0001, requested 0.000101"
    assert state.reason_code == "insufficient_funds"
    assert w.balance("USDT") == (100, 0)


def test_debit_cannot_take_held_funds() -> None:
    w = wallet(BTC=btc("1"))
    w.handle(limit("alice", "s", "sell", PRICE, btc("0.6")))
    out = w.handle(debit("alice", "BTC", btc("0.5"), tid="t"))
    assert only(out, TransferState)[0].status == "REJECTED"
    assert w.balance("BTC") == (btc("0.4"), btc("0.6"))


@pytest.mark.parametrize(
    ("user", "asset", "amount", "reason"),
    [
        ("_ops", "USDT", 1, "reserved account"),
        ("alice", "DOGE", 1, "unknown asset DOGE"),
        ("alice", "USDT", 0, "amount must be positive"),
        ("alice", "USDT", -5, "amount must be positive"),
        ("alice", "USDT", 2**63, "amount must be positive"),
    ],
)
def test_rejected_transfers(user: str, asset: str, amount: int, reason: str) -> None:
    w = WalletMachine(user, MARKETS)
    for command in (credit(user, asset, amount, tid="a"), debit(user, asset, amount, tid="b")):
        out = w.handle(command)
        assert [(s.status, s.reason) for s in only(out, TransferState)] == [("REJECTED", reason)]
        assert len(out) == 1
    assert w.balance(asset) == (0, 0)


def test_credit_beyond_the_largest_amount_is_rejected() -> None:
    w = wallet(USDT=2**63 - 10)
    out = w.handle(credit("alice", "USDT", 11, tid="big"))
    assert only(out, TransferState)[0].reason == "balance would exceed the largest amount"
    assert w.balance("USDT") == (2**63 - 10, 0)


def test_fee_account_may_receive_and_pay_out() -> None:
    w = WalletMachine(FEE_ACCOUNT, MARKETS)
    w.handle(credit(FEE_ACCOUNT, "USDT", 10, tid="a"))
    w.handle(debit(FEE_ACCOUNT, "USDT", 4, tid="b"))
    assert w.balance("USDT") == (6, 0)


# --- placing orders -------------------------------------------------------------------


def test_place_holds_exactly_hold_for() -> None:
    w = wallet(USDT=usdt("1000"), BTC=btc("1"))
    cmd = limit("alice", "b", "buy", PRICE, btc("0.01"), ts=3)
    out = w.handle(cmd)
    assert [type(m) for m in out] == [OrderState, BookOrder, BalanceState]
    state, book_order, _balances = out
    assert isinstance(state, OrderState) and state.status == "NEW" and state.version == 1
    assert isinstance(book_order, BookOrder)
    assert book_order == BookOrder(market="BTC-USDT", src="alice", seq=1, order=cmd,
                                   hold=usdt("501"), prev=0)  # fmt: skip
    assert w.balance("USDT") == (usdt("499"), usdt("501"))
    w.handle(limit("alice", "s", "sell", PRICE, btc("0.25")))
    assert w.balance("BTC") == (btc("0.75"), btc("0.25"))
    w.handle(market_buy("alice", "m", usdt("100")))
    assert w.balance("USDT") == (usdt("399"), usdt("601"))
    assert {k: (h.asset, h.amount) for k, h in w.holds.items()} == {
        oid("alice", "b"): ("USDT", usdt("501")),
        oid("alice", "s"): ("BTC", btc("0.25")),
        oid("alice", "m"): ("USDT", usdt("100")),
    }
    assert (w.outbound.count, w.outbound.last.current) == (3, {"BTC-USDT": 3})


def test_duplicate_order_id_is_ignored() -> None:
    w = wallet(USDT=usdt("1000"))
    w.handle(limit("alice", "b", "buy", PRICE, btc("0.01")))
    assert w.handle(limit("alice", "b", "buy", PRICE, btc("0.01"))) == []
    assert w.handle(limit("alice", "b", "sell", PRICE, btc("1"))) == []  # same id, any terms
    assert w.balance("USDT") == (usdt("499"), usdt("501"))


def test_rejected_orders_hold_nothing() -> None:
    w = wallet(USDT=usdt("100"))
    out = w.handle(limit("alice", "b", "buy", PRICE, btc("0.01")))
    assert [(s.status, s.reason, s.reason_code) for s in only(out, OrderState)] == [
        ("REJECTED", "insufficient USDT: available 100, needed 501", "insufficient_funds")
    ]
    out = w.handle(limit("alice", "x", "buy", PRICE, btc("0.01"), market="DOGE-USDT"))
    assert [(s.status, s.reason) for s in only(out, OrderState)] == [
        ("REJECTED", "unknown market DOGE-USDT")
    ]
    out = w.handle(limit("alice", "y", "buy", PRICE + 1, btc("0.001")))
    assert only(out, OrderState)[0].reason == "price must be a multiple of the tick 0.01"
    assert len(out) == 1
    assert w.balance("USDT") == (usdt("100"), 0)
    assert w.holds == {}
    # A rejected order's id is spent: retrying it is a duplicate.
    assert w.handle(limit("alice", "b", "buy", PRICE, btc("0.001"))) == []


def test_reserved_accounts_cannot_place_orders() -> None:
    fees = WalletMachine(FEE_ACCOUNT, MARKETS)
    fees.handle(credit(FEE_ACCOUNT, "USDT", usdt("1000"), tid="t"))
    out = fees.handle(limit(FEE_ACCOUNT, "b", "buy", PRICE, btc("0.01")))
    assert [(s.status, s.reason) for s in only(out, OrderState)] == [
        ("REJECTED", "reserved account")
    ]
    assert len(out) == 1
    assert fees.balance("USDT") == (usdt("1000"), 0)


# --- cancel and release ---------------------------------------------------------------


def test_cancel_forwards_to_the_book_and_releases_nothing_itself() -> None:
    w = wallet(USDT=usdt("1000"))
    w.handle(limit("alice", "b", "buy", PRICE, btc("0.01")))
    out = w.handle(cancel("alice", "b", ts=9))
    assert out == [BookCancel(market="BTC-USDT", src="alice", seq=2, order_id=oid("alice", "b"),
                              ts=9, prev=1)]  # fmt: skip
    assert w.balance("USDT") == (usdt("499"), usdt("501"))
    # Until the book answers, a second cancel is forwarded too (the book rejects it).
    assert len(only(w.handle(cancel("alice", "b")), BookCancel)) == 1


def test_cancel_of_unknown_or_closed_orders_is_rejected() -> None:
    w = wallet(USDT=usdt("1000"))
    out = w.handle(CancelOrder(user_id="alice", order_id="nope", ts=1))
    assert out == [Rejection(user_id="alice", command="cancel_order", ref="nope",
                             reason="unknown order", ts=1,
                             reason_code="unknown_order")]  # fmt: skip
    w.handle(limit("alice", "b", "buy", PRICE, btc("0.01")))
    w.handle(release("alice", 1, oid("alice", "b")))
    out = w.handle(cancel("alice", "b"))
    assert [r.reason for r in only(out, Rejection)] == ["order is not open"]


def test_release_after_close_frees_the_rest_once() -> None:
    w = wallet(USDT=usdt("1000"))
    w.handle(limit("alice", "b", "buy", PRICE, btc("0.01")))
    out = w.handle(release("alice", 1, oid("alice", "b")))
    assert [type(m) for m in out] == [BalanceState]
    assert w.balance("USDT") == (usdt("1000"), 0)
    assert w.handle(release("alice", 1, oid("alice", "b"))) == []  # a replay
    assert w.holds == {}
    with pytest.raises(InvariantBreach):
        w.handle(release("alice", 2, oid("alice", "b")))  # a second close is a bug


def test_cancel_all_cancels_open_orders_in_placement_order() -> None:
    w = wallet(USDT=usdt("10000"))
    for cid in ("b1", "b2", "b3"):
        w.handle(limit("alice", cid, "buy", PRICE, btc("0.01")))
    w.handle(limit("alice", "e", "buy", usdt("2000"), btc("0.01"), market="ETH-USDT"))
    out = w.handle(cancel_all("alice", "BTC-USDT"))
    # One counter per sender: the ETH-USDT order took 4; each links to the one before.
    assert [(m.order_id, m.seq, m.prev) for m in only(out, BookCancel)] == [
        (oid("alice", "b1"), 5, 3), (oid("alice", "b2"), 6, 5), (oid("alice", "b3"), 7, 6)
    ]  # fmt: skip
    out = w.handle(cancel_all("alice"))
    assert [m.market for m in only(out, BookCancel)] == ["BTC-USDT"] * 3 + ["ETH-USDT"]


# --- settlement -----------------------------------------------------------------------


def test_settle_as_buyer_seller_and_fee_account() -> None:
    buyer = wallet("alice", USDT=usdt("1000"))
    # Holds 500.01 plus the 20 bps taker fee reserve on it, 1.00002.
    buyer.handle(limit("alice", "b", "buy", usdt("50001"), btc("0.01")))
    seller = wallet("bob", BTC=btc("1"))
    seller.handle(limit("bob", "s", "sell", PRICE, btc("0.01")))
    fees = WalletMachine(FEE_ACCOUNT, MARKETS)
    # A trade of 0.01 BTC at 50,000: 500 USDT, taker fee 1, maker fee 0.5, and the
    # buyer's 0.01 of price improvement (it held at 50,001).
    buyer.handle(settle("alice", 1, oid("alice", "b"), usdt("501.01"), usdt("0.01"), btc("0.01")))
    seller.handle(settle("bob", 1, oid("bob", "s"), btc("0.01"), 0, usdt("499.5"), closed=True))
    fees.handle(settle(FEE_ACCOUNT, 1, "", receive=usdt("1.5")))
    # The buyer paid 500 + 1 fee from the hold and got the 0.01 improvement back.
    assert buyer.balance("USDT") == (usdt("498.99998"), usdt("0.00002"))
    assert buyer.balance("BTC") == (btc("0.01"), 0)
    assert seller.balance("BTC") == (btc("0.99"), 0)
    assert seller.balance("USDT") == (usdt("499.5"), 0)
    assert fees.balance("USDT") == (usdt("1.5"), 0)
    # The rest of the buyer's hold (unused fee reserve) comes back on release.
    buyer.handle(release("alice", 2, oid("alice", "b")))
    assert buyer.balance("USDT") == (usdt("1000") - usdt("501"), 0)


def test_settle_as_maker_buyer() -> None:
    maker = wallet("bob", USDT=usdt("1000"))
    maker.handle(limit("bob", "b", "buy", PRICE, btc("0.02")))  # holds 1000 + 2 ... too much
    assert maker.holds == {}  # rejected: 1002 needed
    maker.handle(limit("bob", "b2", "buy", PRICE, btc("0.01")))
    # Filled at its own price: 500 and the 0.5 maker fee out of the hold, 0.01 BTC in.
    maker.handle(settle("bob", 1, oid("bob", "b2"), usdt("500.5"), 0, btc("0.01")))
    assert maker.balance("USDT") == (usdt("499"), usdt("501") - usdt("500.5"))
    assert maker.balance("BTC") == (btc("0.01"), 0)


def test_settlements_the_wallet_cannot_back_are_breaches() -> None:
    w = wallet("carol", USDT=usdt("1000"))
    with pytest.raises(InvariantBreach, match="not open"):
        w.handle(settle("carol", 1, oid("alice", "b"), usdt("1"), 0, btc("0.01")))
    w.handle(limit("carol", "b", "buy", PRICE, btc("0.01")))  # holds 501
    with pytest.raises(InvariantBreach, match="exceeds its hold"):
        w.handle(settle("carol", 2, oid("carol", "b"), usdt("502"), 0, btc("0.01")))
    with pytest.raises(InvariantBreach, match="exceeds its hold"):  # refunds more than taken
        w.handle(settle("carol", 3, oid("carol", "b"), usdt("1"), usdt("2"), btc("0.01")))
    with pytest.raises(InvariantBreach, match="nothing taken"):
        w.handle(settle("carol", 4, oid("carol", "b"), 0, 0, btc("0.01")))
    with pytest.raises(InvariantBreach, match="fee collection"):  # only the fee account
        w.handle(settle("carol", 5, "", receive=usdt("1")))
    assert w.balance("USDT") == (usdt("499"), usdt("501")) and w.balance("BTC") == (0, 0)


def test_settle_replays_and_gaps() -> None:
    w = wallet("alice", USDT=usdt("10000"))
    w.handle(limit("alice", "b", "buy", PRICE, btc("0.03")))
    first = settle("alice", 1, oid("alice", "b"), usdt("501"), 0, btc("0.01"))
    second = settle("alice", 2, oid("alice", "b"), usdt("501"), 0, btc("0.01"))
    assert w.handle(second) == []  # early: parked
    assert w.balance("BTC") == (0, 0)
    (balances,) = w.handle(first)  # both apply, in order: one record
    assert isinstance(balances, BalanceState) and balances.version == w.version
    assert w.handle(first) == []
    assert w.handle(second) == []
    assert w.balance("BTC") == (btc("0.02"), 0)


# --- recovery -------------------------------------------------------------------------


def test_snapshot_restore_gives_identical_outputs() -> None:
    w = wallet("alice", USDT=usdt("10000"), BTC=btc("1"))
    w.handle(limit("alice", "b", "buy", PRICE, btc("0.03")))
    w.handle(limit("alice", "s", "sell", usdt("60000"), btc("0.5")))
    w.handle(settle("alice", 2, oid("alice", "b"), usdt("501"), 0, btc("0.01")))  # parked
    snapshot = w.snapshot()
    rest: list[WalletInbox] = [
        settle("alice", 1, oid("alice", "b"), usdt("501"), 0, btc("0.01")),
        cancel_all("alice"),
        credit("alice", "USDT", 5, tid="later"),
        credit("alice", "USDT", 5, tid="seed-USDT"),
        limit("alice", "b", "buy", PRICE, btc("0.01")),
        limit("alice", "b9", "buy", PRICE, btc("0.01")),
        release("alice", 3, oid("alice", "s")),
    ]
    restored = WalletMachine.restore(snapshot, MARKETS)
    first: list[Message] = [m for cmd in rest for m in w.handle(cmd)]
    second: list[Message] = [m for cmd in rest for m in restored.handle(cmd)]
    assert msgspec.json.encode(first) == msgspec.json.encode(second)
    assert w.snapshot() == restored.snapshot()
    assert len(first) > 8


# --- the bounded dedupe window --------------------------------------------------------

T0 = 1_700_000_000_000


def test_a_wallet_stays_bounded_over_100k_orders() -> None:
    """An order every 100 ms for 10,000 s (about 17 windows), each closed by its book:
    the wallet keeps its open orders and at most two windows of ids, not its history."""
    w = wallet(USDT=usdt("1000000"))
    step, out = 100, []
    sizes = []
    for i in range(100_000):
        cmd = limit("alice", f"o{i}", "buy", PRICE, btc("0.01"), ts=T0 + i * step)
        w.apply(cmd, out.append, out.append)
        w.apply(release("alice", i + 1, cmd.order_id), out.append, out.append)
        if i % 1000 == 999:
            w.flush(out.append)
            sizes.append(len(msgspec.msgpack.encode(w.snapshot())))
            out.clear()
    assert w.holds == {} and w.balance("USDT") == (usdt("1000000"), 0)
    assert len(w.orders_seen) <= 2 * 600_000 // step
    assert len(w.orders_seen) >= 600_000 // step  # never less than a window
    assert w.outbound.count == 100_000
    assert max(sizes[20:]) < 2 * min(sizes[20:])  # flat once the window is full
    assert max(sizes) < 1_000_000


def test_a_hot_wallets_snapshot_is_8_bytes_an_id_of_its_window() -> None:
    """A market maker's 10 orders a second for 20 minutes of message time, each closed
    by its book, with UUID-shaped ids as the API derives them: packed at every 2 s
    epoch, the wallet is 8 bytes an id of its window (6,000 to 12,000 ids) plus under
    a kilobyte; as strings it was 38 bytes an id, 0.46 MB."""
    w = wallet(USDT=usdt("1000000"))
    out: list[Message] = []
    largest = 0
    for i in range(12_000):
        order_id = str(uuid.UUID(int=(i + 1) * 0x9E3779B97F4A7C15F39CC0605CEDC835 % 2**128))
        cmd = PlaceOrder(user_id="alice", order_id=order_id, client_order_id=f"c{i}",
                         market="BTC-USDT", side="buy", type="limit", price=PRICE,
                         quantity=btc("0.01"), ts=T0 + i * 100)  # fmt: skip
        w.apply(cmd, out.append, out.append)
        w.apply(release("alice", i + 1, order_id), out.append, out.append)
        if i % 20 == 19:
            w.flush(out.append)
            out.clear()
            size = len(msgspec.msgpack.encode(w.snapshot()))
            assert size <= 8 * len(w.orders_seen) + 1000
            largest = max(largest, size)
    assert len(w.orders_seen) == 12_000  # two windows' worth at the end
    assert largest < 100_000


def test_a_repeat_inside_the_window_is_ignored() -> None:
    w = wallet(USDT=usdt("1000"))
    first = limit("alice", "b", "buy", PRICE, btc("0.01"), ts=T0)
    w.handle(first)
    w.handle(credit("alice", "USDT", 1, tid="later", ts=T0 + 590_000))  # the clock moves on
    assert w.handle(first) == []
    assert w.handle(credit("alice", "USDT", 1, tid="later", ts=T0 + 590_000)) == []
    assert w.balance("USDT") == (usdt("499") + 1, usdt("501"))


def _age(w: WalletMachine, until: int) -> None:
    """Move the user's clock on to ``until`` with harmless credits, a minute apart."""
    ts = w.clock
    while ts < until:
        ts += 60_000
        w.handle(credit(w.user_id, "BTC", 1, tid=f"age-{ts}", ts=ts))


def test_a_stale_repeat_is_refused_with_a_rejection_and_no_state_record() -> None:
    w = wallet(USDT=usdt("1000"))
    order = limit("alice", "b", "buy", PRICE, btc("0.01"), ts=T0)
    transfer = credit("alice", "USDT", usdt("1"), tid="t1", ts=T0)
    w.handle(order)
    w.handle(transfer)
    _age(w, T0 + 3 * 600_000)
    assert order.order_id not in w.orders_seen and "t1" not in w.transfers_seen
    before = w.snapshot()
    out = w.handle(order) + w.handle(transfer)
    assert out == [
        Rejection(user_id="alice", command="place_order", ref=order.order_id,
                  reason=out[0].reason, reason_code="stale", ts=T0),  # type: ignore[attr-defined]
        Rejection(user_id="alice", command="credit", ref="t1",
                  reason=out[0].reason, reason_code="stale", ts=T0),  # type: ignore[attr-defined]
    ]  # fmt: skip
    assert "stale" in out[0].reason  # type: ignore[attr-defined]
    assert w.snapshot() == before  # nothing held, credited or remembered


def test_a_place_naming_an_open_order_outside_the_window_is_refused() -> None:
    w = wallet(USDT=usdt("1000"))
    order = limit("alice", "b", "buy", PRICE, btc("0.01"), ts=T0)
    w.handle(order)
    _age(w, T0 + 3 * 600_000)  # the order still rests; its id has left the window
    assert order.order_id not in w.orders_seen
    again = msgspec.structs.replace(order, ts=w.clock + 1)  # new enough not to be stale
    out = w.handle(again)
    assert out == [
        Rejection(user_id="alice", command="place_order", ref=order.order_id,
                  reason="duplicate order id: an order with this id is open",
                  reason_code="duplicate_order_id", ts=again.ts),
    ]  # fmt: skip
    # The open order keeps its hold: nothing more held, its cancel still goes to the
    # book, and the book's close releases exactly what it held.
    assert w.balance("USDT") == (usdt("499"), usdt("501"))
    assert len(only(w.handle(cancel("alice", "b", ts=w.clock)), BookCancel)) == 1
    w.handle(release("alice", 1, order.order_id))
    assert w.balance("USDT") == (usdt("1000"), 0) and w.holds == {}


def test_an_idle_users_next_command_is_not_stale() -> None:
    w = wallet(USDT=usdt("1000"))
    w.handle(limit("alice", "a", "buy", PRICE, btc("0.01"), ts=T0))
    w.handle(release("alice", 1, oid("alice", "a")))
    later = limit("alice", "b", "buy", PRICE, btc("0.01"), ts=T0 + 10 * 600_000)
    assert [type(m) for m in w.handle(later)] == [OrderState, BookOrder, BalanceState]
    # The clock jumped, but the old order's id is still remembered for a window.
    assert w.handle(limit("alice", "a", "buy", PRICE, btc("0.01"), ts=T0)) == []


def test_reports_from_the_books_do_not_age_the_users_commands() -> None:
    w = wallet(USDT=usdt("1000"))
    w.handle(limit("alice", "b", "buy", PRICE, btc("0.01"), ts=T0))
    late = msgspec.structs.replace(release("alice", 1, oid("alice", "b")), ts=T0 + 10 * 600_000)
    w.handle(late)
    assert w.clock == T0
    out = w.handle(credit("alice", "USDT", 1, tid="t", ts=T0 + 1))
    assert [m.status for m in only(out, TransferState)] == ["ACCEPTED"]
