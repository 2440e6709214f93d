"""The in-memory exchange end to end: balances to the unit, cancels, replays."""

from __future__ import annotations

import pickle
from collections import defaultdict, deque
from typing import Any

import msgspec
import pytest

from crypton.domain.exchange import Exchange
from crypton.domain.invariants import exchange_problems, net_transfers
from crypton.domain.matching import BookMachine
from crypton.domain.messages import (
    FEE_ACCOUNT,
    TERMINAL,
    BalanceState,
    BookCancel,
    BookOrder,
    Message,
    OrderState,
    PlaceOrder,
    Rejection,
    Trade,
    WalletInbox,
)
from crypton.domain.wallet import WalletMachine
from crypton.views import View

from .support import (
    MARKETS,
    AuditedExchange,
    btc,
    cancel,
    cancel_all,
    credit,
    debit,
    last_state,
    limit,
    market_buy,
    market_sell,
    oid,
    only,
    usdt,
)

P = usdt("50000")


def test_two_users_trade_end_to_end() -> None:
    ex = AuditedExchange()
    ex.submit(credit("alice", "USDT", usdt("10000"), tid="a1"))
    ex.submit(credit("bob", "BTC", btc("1"), tid="b1"))
    out = ex.submit(limit("bob", "s", "sell", P, btc("0.1")))
    assert [(s.status, s.version) for s in only(out, OrderState)] == [("NEW", 1), ("OPEN", 2)]
    out = ex.submit(limit("alice", "b", "buy", P, btc("0.04")))
    # Events as they happen, then one record per changed balance and order.
    assert [(type(m).__name__, getattr(m, "user_id", None), getattr(m, "version", None))
            for m in out] == [
        ("OrderState", "alice", 1),  # NEW
        ("Trade", None, None),
        ("BalanceState", "alice", 3),  # the hold, then the settlement: one record
        ("OrderState", "bob", 3),  # PARTIALLY_FILLED
        ("OrderState", "alice", 2),  # FILLED
        ("BalanceState", "bob", 3),  # settles the trade
        ("BalanceState", FEE_ACCOUNT, 1),
    ]  # fmt: skip
    (trade,) = only(out, Trade)
    assert (trade.seq, trade.notional, trade.maker_fee, trade.taker_fee) == (
        1, usdt("2000"), usdt("2"), usdt("4"),
    )  # fmt: skip
    assert ex.wallet("alice").balance("USDT") == (usdt("10000") - usdt("2004"), 0)
    assert ex.wallet("alice").balance("BTC") == (btc("0.04"), 0)
    assert ex.wallet("bob").balance("BTC") == (btc("0.9"), btc("0.06"))
    assert ex.wallet("bob").balance("USDT") == (usdt("1998"), 0)
    assert ex.wallet(FEE_ACCOUNT).balance("USDT") == (usdt("6"), 0)
    # Bob withdraws his proceeds; alice cannot withdraw more than she has.
    ex.submit(debit("bob", "USDT", usdt("1998"), tid="b2"))
    assert ex.submit(debit("alice", "BTC", btc("0.05"), tid="a2"))[0].status == "REJECTED"  # type: ignore[attr-defined]
    assert ex.transfers == {"USDT": usdt("8002"), "BTC": btc("1")}
    depth = ex.depth("BTC-USDT", 5, ts=1)
    assert (depth.bids, depth.asks, depth.seq) == ([], [(P, btc("0.06"))], 2)


def test_cancel_releases_exactly_the_held_funds_once() -> None:
    ex = AuditedExchange()
    ex.submit(credit("alice", "USDT", usdt("10000"), tid="a1"))
    ex.submit(credit("bob", "BTC", btc("1"), tid="b1"))
    ex.submit(limit("alice", "b", "buy", P, btc("0.1")))  # holds 5000 + 10
    ex.submit(limit("bob", "s", "sell", P, btc("0.03")))  # alice is maker: 1500 + 1.5 fee
    assert ex.wallet("alice").balance("USDT") == (usdt("4990"), usdt("5010") - usdt("1501.5"))
    out = ex.submit(cancel("alice", "b", ts=3))
    state = last_state(out, oid("alice", "b"))
    assert (state.status, state.reason, state.filled_quantity) == (
        "CANCELED", "canceled by user", btc("0.03"),
    )  # fmt: skip
    assert [b.balances["USDT"].available for b in only(out, BalanceState)] == [
        usdt("10000") - usdt("1501.5")
    ]
    assert ex.wallet("alice").balance("USDT") == (usdt("8498.5"), 0)
    out = ex.submit(cancel("alice", "b", ts=4))
    assert out == [Rejection(user_id="alice", command="cancel_order", ref=oid("alice", "b"),
                             reason="order is not open", ts=4,
                             reason_code="order_not_open")]  # fmt: skip
    assert ex.wallet("alice").balance("USDT") == (usdt("8498.5"), 0)


def test_cancel_all() -> None:
    ex = AuditedExchange()
    ex.submit(credit("alice", "USDT", usdt("10000"), tid="a1"))
    ex.submit(limit("alice", "b1", "buy", P, btc("0.01")))
    ex.submit(limit("alice", "b2", "buy", P - usdt("1"), btc("0.01")))
    ex.submit(limit("alice", "e", "buy", usdt("2000"), btc("0.1"), market="ETH-USDT"))
    out = ex.submit(cancel_all("alice", "BTC-USDT"))
    assert [s.order_id for s in only(out, OrderState) if s.status == "CANCELED"] == [
        oid("alice", "b1"), oid("alice", "b2")
    ]  # fmt: skip
    assert ex.wallet("alice").balance("USDT") == (usdt("10000") - usdt("200.4"), usdt("200.4"))
    ex.submit(cancel_all("alice"))
    assert ex.wallet("alice").balance("USDT") == (usdt("10000"), 0)
    assert ex.submit(cancel_all("alice")) == []


class DuplicatingExchange(Exchange):
    """Delivers every message between the machines twice, as an at-least-once log may."""

    def submit(self, command: WalletInbox) -> list[Message]:
        queue: deque[Message] = deque((command,))
        emitted: list[Message] = []
        touched: dict[WalletMachine | BookMachine, None] = {}
        self.internal = getattr(self, "internal", 0)

        def send(item: Message) -> None:
            queue.extend((item, item))
            self.internal += 1

        while queue:
            msg = queue.popleft()
            machine: WalletMachine | BookMachine
            if isinstance(msg, BookOrder | BookCancel):
                machine = self.books[msg.market]
            else:
                machine = self.wallet(msg.user_id)  # type: ignore[attr-defined]
            touched[machine] = None
            machine.apply(msg, send, emitted.append)  # type: ignore[arg-type]
        for machine in touched:
            machine.flush(emitted.append)
        return emitted


def _session() -> list[WalletInbox]:
    commands: list[WalletInbox] = []
    for user in ("alice", "bob", "carol"):
        commands += [credit(user, "USDT", usdt("50000"), tid=user), credit(user, "BTC", btc("2"))]
    commands += [
        limit("bob", "s1", "sell", P, btc("0.2")),
        limit("carol", "s2", "sell", P + usdt("10"), btc("0.3")),
        limit("alice", "b1", "buy", P + usdt("10"), btc("0.25")),
        market_buy("alice", "m1", usdt("3000")),
        limit("alice", "b2", "buy", P - usdt("100"), btc("0.1")),
        market_sell("bob", "m2", btc("0.05")),
        cancel("alice", "b2"),
        cancel("alice", "b2"),
        limit("carol", "s3", "sell", P, btc("0.1"), stp="expire_both"),
        limit("carol", "b3", "buy", P, btc("0.1"), stp="expire_both"),
        limit("alice", "f", "buy", P + usdt("20"), btc("1"), time_in_force="FOK"),
        limit("alice", "i", "buy", P + usdt("20"), btc("1"), time_in_force="IOC"),
        cancel_all("bob"),
        debit("carol", "BTC", btc("1"), tid="w"),
    ]
    return commands


def test_replaying_every_internal_message_changes_nothing() -> None:
    plain, doubled = Exchange(MARKETS), DuplicatingExchange(MARKETS)
    first = [m for cmd in _session() for m in plain.submit(cmd)]
    second = [m for cmd in _session() for m in doubled.submit(cmd)]
    assert len(only(first, Trade)) >= 4
    assert doubled.internal > 20
    assert msgspec.json.encode(first) == msgspec.json.encode(second)
    for user, wallet in plain.wallets.items():
        assert doubled.wallets[user].snapshot() == wallet.snapshot()
    for symbol, book in plain.books.items():
        assert doubled.books[symbol].snapshot() == book.snapshot()
    assert exchange_problems(doubled, {"USDT": usdt("150000"), "BTC": btc("5")}) == []


def test_the_same_commands_give_the_same_bytes() -> None:
    runs = [[m for cmd in _session() for m in Exchange(MARKETS).submit(cmd)] for _ in range(2)]
    assert msgspec.json.encode(runs[0]) == msgspec.json.encode(runs[1])


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_batches_publish_the_latest_state_of_everything_they_change(size: int) -> None:
    """However the commands are batched, folding what came out gives the machines' state:
    one record per changed balance and order per batch loses nothing a reader needs."""
    ex = Exchange(MARKETS)
    commands = _session()
    out: list[Message] = []
    for i in range(0, len(commands), size):
        out += ex.submit_batch(commands[i : i + size])
    assert exchange_problems(ex, net_transfers(out)) == []
    view = View().apply_all(out)
    for user, wallet in ex.wallets.items():
        state = view.balances.get(user)
        if state is None:
            assert not any(any(wallet.balance(a)) for a in wallet.balances), user
            continue
        assert state.version == wallet.version
        assert {a: (b.available, b.held) for a, b in state.balances.items()} == {
            a: wallet.balance(a) for a in wallet.balances
        }
    resting = {oid: o for book in ex.books.values() for oid, o in book.book.orders.items()}
    for order_id, state in view.orders.items():
        if state.status in TERMINAL:
            assert order_id not in resting
        else:
            order = resting[order_id]
            assert (state.status, state.version, state.filled_quantity) == (
                order.status, order.version, order.filled_quantity,
            )  # fmt: skip
    assert len(view.trades) == len(only(out, Trade)) >= 4


# --- determinism with bounded state ---------------------------------------------------

T0 = 1_700_000_000_000
Machine = WalletMachine | BookMachine


def _long_session() -> list[WalletInbox]:
    """Two hours of trading (twelve windows) by users who come and go, with client
    retries inside the window and stale repeats from long before it."""
    commands: list[WalletInbox] = []
    users = [f"u{i}" for i in range(12)]
    for user in users:
        commands += [credit(user, "USDT", usdt("100000"), tid=f"{user}-q", ts=T0),
                     credit(user, "BTC", btc("10"), tid=f"{user}-b", ts=T0)]  # fmt: skip
    for i in range(2400):
        ts = T0 + i * 3_000
        user = users[(i // 150 + i % 3) % len(users)]  # a shifting set of active users
        side = "buy" if i % 2 else "sell"
        price = P + (i % 5 - 2) * usdt("10")
        tif = "IOC" if i % 4 == 3 else "GTC"
        order = limit(user, f"o{i}", side, price, btc("0.01"), ts=ts, time_in_force=tif)  # type: ignore[arg-type]
        commands.append(order)
        if i % 7 == 6:
            commands.append(cancel(user, f"o{i - 6}", ts=ts))
        if i % 50 == 49:
            commands.append(commands[-30])  # a retry inside the window
        if i % 300 == 299:
            commands.append(commands[len(users) * 2 + 10])  # a repeat from hours ago
    return commands


def _run_logged(commands: list[WalletInbox]) -> tuple[Exchange, dict[str, list[Any]]]:
    """Run FIFO like ``Exchange``, delivering every fifth message between machines
    twice (at-least-once), and log each machine's inbox in arrival order."""
    ex = Exchange(MARKETS)
    inboxes: dict[str, list[Any]] = defaultdict(list)
    queue: deque[Any] = deque()
    internal = 0

    def send(msg: Message) -> None:
        nonlocal internal
        internal += 1
        queue.append(msg)
        if internal % 5 == 0:
            queue.append(msg)

    for command in commands:
        queue.append(command)
        touched: dict[Machine, None] = {}
        while queue:
            msg = queue.popleft()
            machine: Machine
            if isinstance(msg, BookOrder | BookCancel):
                key, machine = f"book:{msg.market}", ex.books[msg.market]
            else:
                key, machine = f"wallet:{msg.user_id}", ex.wallet(msg.user_id)
            inboxes[key].append(msg)
            touched[machine] = None
            machine.apply(msg, send, lambda m: None)
        for machine in touched:
            machine.flush(lambda m: None)
    return ex, inboxes


def _replay(key: str, inbox: list[Any], batch: int, cut: int) -> tuple[list[bytes], Any, Any]:
    """One machine fed its inbox in batches of ``batch``, restored from a pickled
    snapshot after message ``cut``: what it sent, the state it published, its snapshot."""
    kind, name = key.split(":")

    def fresh() -> Machine:
        if kind == "book":
            return BookMachine(MARKETS.market(name))
        return WalletMachine(name, MARKETS)

    def restore(snapshot: Any) -> Machine:
        if kind == "book":
            return BookMachine.restore(snapshot, MARKETS.market(name))
        return WalletMachine.restore(snapshot, MARKETS)

    machine = fresh()
    sent: list[bytes] = []
    view = View()
    events: list[bytes] = []

    def emit(msg: Message) -> None:
        view.apply(msg)
        if not isinstance(msg, OrderState | BalanceState):
            events.append(msgspec.json.encode(msg))

    for i, msg in enumerate(inbox):
        if i == cut:
            machine.flush(emit)
            machine = restore(pickle.loads(pickle.dumps(machine.snapshot())))
        machine.apply(msg, lambda m: sent.append(msgspec.json.encode(m)), emit)
        if i % batch == batch - 1:
            machine.flush(emit)
    machine.flush(emit)
    published = (view.orders, view.balances, view.transfers, events)
    return sent, published, machine.snapshot()


def test_the_same_log_gives_the_same_outputs_and_snapshots_whatever_the_batching() -> None:
    ex, inboxes = _run_logged(_long_session())
    assert sum(b.inbound.stale for b in ex.books.values()) == 0  # nothing old reached a book
    assert sum(len(inbox) for inbox in inboxes.values()) > 5000
    for key, inbox in sorted(inboxes.items()):
        runs = [_replay(key, inbox, batch, cut) for batch, cut in
                ((1, len(inbox)), (7, len(inbox) // 3), (10_000, len(inbox) // 2))]  # fmt: skip
        assert runs[0] == runs[1] == runs[2], key
        machine = ex.books[key[5:]] if key.startswith("book:") else ex.wallets[key[7:]]
        assert runs[0][2] == machine.snapshot(), key
    # The books forgot the users idle for a while, and still applied everything once.
    for book in ex.books.values():
        assert len(book.inbound.applied) < 12


def test_stale_repeats_are_refused_and_bounded_state_holds_the_invariants() -> None:
    ex = AuditedExchange()  # checks every invariant after every command
    session = _long_session()
    out = [m for cmd in session for m in ex.submit(cmd)]
    old = session[12 * 2 + 10]
    assert isinstance(old, PlaceOrder)
    # Repeated eight times over two hours: ignored while remembered, then refused as
    # stale; never a second order.
    stale = [m for m in only(out, Rejection) if m.reason_code == "stale"]
    assert 0 < len(stale) <= 8 and {m.ref for m in stale} == {old.order_id}
    assert [s.version for s in only(out, OrderState) if s.order_id == old.order_id][:1] == [1]
    assert sum(s.version == 1 for s in only(out, OrderState) if s.order_id == old.order_id) == 1
    assert all(len(w.orders_seen) < 500 for w in ex.wallets.values())


def test_an_open_order_outlives_the_window_and_a_repeat_of_it_is_refused() -> None:
    ex = AuditedExchange()  # checks every invariant after every command
    hour = 3_600_000
    ex.submit(credit("alice", "USDT", usdt("10000"), tid="a1"))
    ex.submit(credit("bob", "BTC", btc("1"), tid="b1"))
    order = limit("alice", "b", "buy", P, btc("0.04"), ts=1)
    (_new, _balances, opened) = ex.submit(order)
    assert (opened.status, opened.version) == ("OPEN", 2)  # type: ignore[attr-defined]
    # Two hours on: the order still rests and its id is out of the wallet's window.
    ex.submit(credit("alice", "USDT", 1, tid="a2", ts=hour))
    ex.submit(credit("alice", "USDT", 1, tid="a3", ts=2 * hour))
    again = msgspec.structs.replace(order, ts=2 * hour + 1)
    out = ex.submit(again)
    assert [(type(m).__name__, getattr(m, "reason_code", None)) for m in out] == [
        ("Rejection", "duplicate_order_id")
    ]
    # The open order is untouched: it fills, and its wallet settles it.
    out = ex.submit(limit("bob", "s", "sell", P, btc("0.04"), ts=2 * hour + 2))
    (state,) = [s for s in only(out, OrderState) if s.order_id == order.order_id]
    assert (state.status, state.version) == ("FILLED", opened.version + 1)  # type: ignore[attr-defined]
    assert ex.wallet("alice").balance("BTC") == (btc("0.04"), 0)
    assert ex.wallet("alice").holds == {}
