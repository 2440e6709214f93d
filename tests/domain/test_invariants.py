"""The invariant checks find what they claim to find, and nothing on sound state."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from crypton.domain.invariants import (
    TradeSequenceAudit,
    book_problems,
    exchange_balances,
    exchange_problems,
    hold_problems,
    link_problems,
    net_transfers,
    supply_problems,
    trade_problems,
    trade_sequence_problems,
    transition_problems,
)
from crypton.domain.messages import OrderState, Settlement, Trade, TransferState
from crypton.domain.wallet import _Hold

from .support import (
    BTC_USDT,
    AuditedExchange,
    btc,
    credit,
    debit,
    limit,
    oid,
    only,
    usdt,
)

P = usdt("50000")


@pytest.fixture
def ex() -> AuditedExchange:
    """Alice has a resting buy, bob a partly filled sell; all sound."""
    exchange = AuditedExchange()
    exchange.submit(credit("alice", "USDT", usdt("10000"), tid="a"))
    exchange.submit(credit("bob", "BTC", btc("1"), tid="b"))
    exchange.submit(limit("alice", "b", "buy", P - usdt("10"), btc("0.1")))
    exchange.submit(limit("bob", "s", "sell", P, btc("0.2")))
    exchange.submit(limit("alice", "b2", "buy", P, btc("0.05")))
    return exchange


SUPPLY = {"USDT": usdt("10000"), "BTC": btc("1")}


def test_a_sound_exchange_has_no_problems(ex: AuditedExchange) -> None:
    assert exchange_problems(ex, SUPPLY) == []
    assert exchange_balances(ex)["bob"] == {
        "BTC": (btc("0.8"), btc("0.15")),
        "USDT": (usdt("2500") - usdt("2.5"), 0),
    }


def test_supply(ex: AuditedExchange) -> None:
    assert exchange_problems(ex, {"USDT": usdt("10000")}) == [
        "BTC: balances total 100000000, credits minus debits 0"
    ]
    ex.wallet("bob").balances["USDT"].available += 1
    assert exchange_problems(ex, SUPPLY) == ["USDT: balances total 10000000001, credits minus "
                                             "debits 10000000000"]  # fmt: skip


def test_negative_balances() -> None:
    assert supply_problems({"a": {"X": (-5, 5)}, "b": {"X": (3, -1)}}, {"X": 2}) == [
        "a X: negative balance (available -5, held 5)",
        "b X: negative balance (available 3, held -1)",
    ]


def test_held_must_equal_open_holds(ex: AuditedExchange) -> None:
    alice = ex.wallet("alice")
    alice.balances["USDT"].held -= 7
    alice.balances["USDT"].available += 7
    held = alice.balance("USDT")[1]
    assert hold_problems(alice) == [f"alice USDT: held {held}, open holds sum to {held + 7}"]


def test_every_resting_order_has_its_hold(ex: AuditedExchange) -> None:
    alice = ex.wallet("alice")
    hold = alice.holds.pop(oid("alice", "b"))
    assert link_problems(ex.wallets, ex.books) == [
        "BTC-USDT order alice/b of alice: rests with no hold in its wallet"
    ]
    alice.holds[oid("alice", "b")] = _Hold("BTC-USDT", "USDT", hold.amount - 1, "BTC")
    assert link_problems(ex.wallets, ex.books) == [
        f"BTC-USDT order alice/b of alice: holds {hold.amount - 1} USDT, its rest needs"
        f" {hold.amount}"
    ]
    alice.holds[oid("alice", "b")] = _Hold("BTC-USDT", "BTC", hold.amount, "USDT")
    assert link_problems(ex.wallets, ex.books) == [
        "BTC-USDT order alice/b of alice: holds BTC in BTC-USDT"
    ]


def test_a_partly_filled_sell_holds_its_remainder(ex: AuditedExchange) -> None:
    bob = ex.wallet("bob")
    assert bob.holds[oid("bob", "s")].amount == btc("0.15")
    bob.holds[oid("bob", "s")].amount = btc("0.2")
    assert link_problems(ex.wallets, ex.books) == [
        "BTC-USDT order bob/s of bob: holds 20000000 BTC, its rest needs 15000000"
    ]


def test_every_hold_has_its_resting_order(ex: AuditedExchange) -> None:
    ex.wallet("bob").holds["ghost"] = _Hold("BTC-USDT", "BTC", 5, "USDT")
    assert link_problems(ex.wallets, ex.books) == [
        "bob holds 5 BTC for order ghost, which does not rest in BTC-USDT"
    ]
    assert link_problems(ex.wallets, ex.books, in_flight={"ghost"}) == []
    ex.wallet("bob").holds["ghost"] = _Hold("ETH-USDT", "BTC", 5, "USDT")
    ex.books["BTC-USDT"].book.remove(oid("bob", "s"))
    problems = link_problems(ex.wallets, ex.books, in_flight={"ghost"})
    assert problems == [
        f"bob holds {btc('0.15')} BTC for order bob/s, which does not rest in BTC-USDT"
    ]


def test_gaps_are_problems(ex: AuditedExchange) -> None:
    ex.wallet("bob").handle(
        Settlement(
            user_id="bob",
            src="BTC-USDT",
            seq=99,
            prev=98,
            order_id="x",
            take=0,
            refund=0,
            receive=0,
            closed=True,
            ts=0,
        )
    )
    assert exchange_problems(ex, SUPPLY) == ["bob: 1 messages wait on a gap"]


def test_book_problems_on_the_exchange(ex: AuditedExchange) -> None:
    machine = ex.books["BTC-USDT"]
    assert book_problems(machine) == []
    machine.book.orders["stray"] = machine.book.orders[oid("bob", "s")]
    assert book_problems(machine) == ["BTC-USDT: order stray is indexed but rests on no level"]


def _trade(seq: int, market: str = "BTC-USDT", **fields: Any) -> Trade:
    base: dict[str, Any] = {
        "market": market, "seq": seq, "price": P, "quantity": btc("0.01"),
        "notional": usdt("500"), "taker_side": "buy", "maker_order_id": "m",
        "taker_order_id": "t", "maker_user_id": "a", "taker_user_id": "b",
        "maker_fee": usdt("0.5"), "taker_fee": usdt("1"), "buyer_release": 0, "time": 0,
    }  # fmt: skip
    return Trade(**{**base, **fields})


def test_trade_sequences_per_market() -> None:
    trades = [_trade(1), _trade(1, "ETH-USDT"), _trade(2), _trade(2, "ETH-USDT"), _trade(3)]
    assert trade_sequence_problems(trades) == []
    assert trade_sequence_problems([_trade(1), _trade(3), _trade(3), _trade(4)]) == [
        "BTC-USDT: trade seq 3 after 1",
        "BTC-USDT: trade seq 3 after 3",
    ]
    assert trade_sequence_problems([_trade(2)]) == ["BTC-USDT: trade seq 2 after 0"]
    assert TradeSequenceAudit({"BTC-USDT": 1}).feed(_trade(2)) == []


def test_trade_arithmetic() -> None:
    assert trade_problems(_trade(1), BTC_USDT) == []
    bad = _trade(
        7, price=P + 1, quantity=btc("0.01") + 1, maker_fee=usdt("0.6"), taker_fee=-1,
        buyer_release=-1, taker_user_id="a",
    )  # fmt: skip
    assert trade_problems(bad, BTC_USDT) == [
        "BTC-USDT#7: price 50000000001 is off the tick",
        "BTC-USDT#7: quantity 1000001 is off the step",
        "BTC-USDT#7: notional 500000000 is not price x quantity",
        "BTC-USDT#7: maker fee 600000 outside 0..10 bps of the notional",
        "BTC-USDT#7: taker fee -1 outside 0..20 bps of the notional",
        "BTC-USDT#7: negative buyer release -1",
        "BTC-USDT#7: a traded with itself",
    ]


def test_real_order_histories_are_legal(ex: AuditedExchange) -> None:
    states = only(ex.history, OrderState)
    assert len(states) >= 6
    assert transition_problems(states) == []


def _state(version: int, status: str, filled: int = 0, **fields: Any) -> OrderState:
    base: dict[str, Any] = {
        "order_id": "o", "user_id": "u", "client_order_id": "c", "market": "BTC-USDT",
        "side": "buy", "type": "limit", "price": P, "quantity": 100, "funds": None,
        "time_in_force": "GTC", "post_only": False, "stp": "expire_taker",
        "created_at": 0, "updated_at": 0,
    }  # fmt: skip
    reason = "why" if status in ("CANCELED", "REJECTED", "EXPIRED") else None
    return OrderState(**{**base, "status": status, "version": version,
                         "filled_quantity": filled, "reason": reason, **fields})  # fmt: skip


@pytest.mark.parametrize(
    ("states", "problems"),
    [
        ([_state(1, "NEW"), _state(2, "OPEN"), _state(3, "PARTIALLY_FILLED", 10),
          _state(4, "PARTIALLY_FILLED", 20), _state(5, "FILLED", 100)], []),
        ([_state(1, "REJECTED")], []),
        ([_state(1, "NEW"), _state(2, "REJECTED")], []),
        ([_state(1, "NEW"), _state(2, "EXPIRED", 30)], []),
        ([_state(1, "OPEN")], ["order o: first state is OPEN v1"]),
        ([_state(2, "NEW")], ["order o: first state is NEW v2"]),
        ([_state(1, "NEW"), _state(3, "OPEN")], ["order o: version 3 after 1"]),
        ([_state(1, "NEW"), _state(2, "OPEN"), _state(2, "CANCELED")],
         ["order o: version 2 after 2"]),
        ([_state(1, "NEW"), _state(2, "FILLED", 100), _state(3, "CANCELED", 100)],
         ["order o: CANCELED after FILLED"]),
        ([_state(1, "REJECTED"), _state(2, "OPEN")], ["order o: OPEN after REJECTED"]),
        ([_state(1, "NEW"), _state(2, "PARTIALLY_FILLED", 5), _state(3, "OPEN")],
         ["order o: OPEN after PARTIALLY_FILLED", "order o: filled_quantity decreased"]),
        ([_state(1, "NEW"), _state(2, "PARTIALLY_FILLED", 50),
          _state(3, "PARTIALLY_FILLED", 40)], ["order o: filled_quantity decreased"]),
        ([_state(1, "NEW"), _state(2, "PARTIALLY_FILLED", 101)],
         ["order o: filled 101 of 100"]),
        ([_state(1, "NEW"), _state(2, "FILLED", 99)], ["order o: FILLED with 99 of 100"]),
        ([_state(1, "NEW"), _state(2, "PARTIALLY_FILLED", 0)],
         ["order o: PARTIALLY_FILLED with nothing filled"]),
        ([_state(1, "NEW"), _state(2, "OPEN", price=P + 1)], ["order o: price changed"]),
        ([_state(1, "NEW"), _state(2, "CANCELED", reason=None)],
         ["order o: CANCELED with reason None"]),
        ([_state(1, "NEW"), _state(2, "PARTIALLY_FILLED", 5, fee=3), _state(3, "FILLED", 100)],
         ["order o: fee decreased"]),
    ],
)  # fmt: skip
def test_transitions(states: list[OrderState], problems: list[str]) -> None:
    assert transition_problems(states) == problems


def test_transitions_of_interleaved_orders() -> None:
    a = [_state(1, "NEW"), _state(2, "OPEN")]
    b = [msgspec.structs.replace(s, order_id="p") for s in a]
    assert transition_problems([a[0], b[0], b[1], a[1]]) == []


def test_net_transfers(ex: AuditedExchange) -> None:
    ex.submit(debit("alice", "USDT", usdt("1"), tid="w1"))
    ex.submit(debit("alice", "USDT", usdt("100000"), tid="w2"))  # rejected
    assert net_transfers(ex.history) == {"USDT": usdt("9999"), "BTC": btc("1")}
    assert only(ex.history, TransferState)[-1].status == "REJECTED"
