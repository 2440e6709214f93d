"""The exchange flow under bytewax.testing, one worker and two, against the pure core."""

from __future__ import annotations

from pathlib import Path

import pytest

from crypton.config import load_markets
from crypton.domain.exchange import Exchange
from crypton.domain.messages import (
    BookOrder,
    CancelOrder,
    Credit,
    DeadLetter,
    Debit,
    Message,
    PlaceOrder,
)
from crypton.views import View
from tests.dataflows.loop import Loop
from tests.dataflows.scenarios import funding, trading

MARKETS = load_markets()
BTC = MARKETS.market("BTC-USDT")


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def loop(request: pytest.FixtureRequest, tmp_path: Path) -> Loop:
    return Loop(MARKETS, tmp_path / "recovery", workers=request.param)


def core_view(commands: list[Message]) -> View:
    exchange = Exchange(MARKETS)
    view = View()
    for command in commands:
        view.apply_all(exchange.submit(command))  # type: ignore[arg-type]
    return view


def flow_view(loop: Loop) -> View:
    view = View()
    for records in loop.written.values():
        view.apply_all(records)
    return view


def order(user: str, oid: str, side: str, price: str, qty: str, **kw: object) -> PlaceOrder:
    return PlaceOrder(
        user_id=user,
        order_id=oid,
        client_order_id=oid,
        market="BTC-USDT",
        side=side,  # type: ignore[arg-type]
        type="limit",
        price=int(price) * BTC.quote.scale,
        quantity=int(qty) * BTC.step,
        ts=kw.pop("ts", 10),
        **kw,  # type: ignore[arg-type]
    )


def test_one_command_at_a_time_matches_the_pure_core(loop: Loop) -> None:
    """Each command runs to quiescence before the next, so the flow sees the same
    order as the in-memory core: every final state must be identical."""
    commands = funding(MARKETS) + trading(MARKETS, 40, seed=3)
    for command in commands:
        loop.send(command)
        loop.run()
    expected, got = core_view(commands), flow_view(loop)
    assert got.orders == expected.orders
    assert got.balances == expected.balances
    assert got.trades == expected.trades
    assert got.transfers == expected.transfers
    assert [r.ref for r in got.rejections] == [r.ref for r in expected.rejections]
    assert len(expected.trades) >= 5, "the scenario must trade"


def test_trade_settles_both_wallets_and_the_fee_account(loop: Loop) -> None:
    loop.send(
        Credit(user_id="s", asset="BTC", amount=10**8, transfer_id="t", ts=1),
        Credit(user_id="b", asset="USDT", amount=1_000 * 10**6, transfer_id="t", ts=1),
        order("s", "sell-1", "sell", "50000", "3", ts=2),
    )
    loop.run()
    loop.send(order("b", "buy-1", "buy", "50100", "2", ts=3))
    loop.run()
    view = flow_view(loop)
    (trade,) = view.trades.values()
    assert (trade.price, trade.quantity, trade.taker_side) == (50_000 * 10**6, 20_000, "buy")
    # 0.0002 BTC at 50,000 = 10 USDT; taker fee 0.2% = 0.02, maker 0.1% = 0.01
    assert view.balance_table() == {
        "_fees": {"USDT": (30_000, 0)},
        "b": {"USDT": (1_000_000_000 - 10_000_000 - 20_000, 0), "BTC": (20_000, 0)},
        "s": {"BTC": (10**8 - 30_000, 10_000), "USDT": (10_000_000 - 10_000, 0)},
    }
    assert view.orders["buy-1"].status == "FILLED"
    assert view.orders["sell-1"].status == "PARTIALLY_FILLED"
    assert view.depth["BTC-USDT"].asks == [(50_000 * 10**6, 10_000)]


def test_rejections_are_never_silent(loop: Loop) -> None:
    loop.send(
        Credit(user_id="u", asset="USDT", amount=5 * 10**6, transfer_id="t1", ts=1),
        Debit(user_id="u", asset="USDT", amount=6 * 10**6, transfer_id="t2", ts=2),
        Credit(user_id="u", asset="DOGE", amount=1, transfer_id="t3", ts=3),
        order("u", "too-big", "buy", "50000", "10", ts=4),
        PlaceOrder(
            user_id="u",
            order_id="nowhere",
            client_order_id="x",
            market="XRP-USDT",
            side="buy",
            type="limit",
            price=1,
            quantity=1,
            ts=5,
        ),
        CancelOrder(user_id="u", order_id="never-placed", ts=6),
    )
    loop.run()
    view = flow_view(loop)
    assert view.transfers[("u", "t2")].status == "REJECTED"
    assert "insufficient USDT" in (view.transfers[("u", "t2")].reason or "")
    assert view.transfers[("u", "t3")].reason == "unknown asset DOGE"
    assert view.orders["too-big"].status == "REJECTED"
    assert view.orders["too-big"].reason == "insufficient USDT: available 5, needed 50.1"
    assert view.orders["nowhere"].reason == "unknown market XRP-USDT"
    assert [(r.ref, r.reason) for r in view.rejections] == [("never-placed", "unknown order")]
    assert view.balance_table() == {"u": {"USDT": (5 * 10**6, 0)}}


def test_cancel_releases_the_hold_exactly_once(loop: Loop) -> None:
    loop.send(
        Credit(user_id="u", asset="USDT", amount=100 * 10**6, transfer_id="t", ts=1),
        order("u", "o1", "buy", "40000", "10", ts=2),
    )
    loop.run()
    assert flow_view(loop).balance_table()["u"]["USDT"] == (100 * 10**6 - 40_080_000, 40_080_000)
    # Two cancels in flight at once: the book closes the order once, the second is refused.
    loop.send(
        CancelOrder(user_id="u", order_id="o1", ts=3), CancelOrder(user_id="u", order_id="o1", ts=4)
    )
    loop.run()
    view = flow_view(loop)
    assert view.orders["o1"].status == "CANCELED"
    assert view.balance_table()["u"]["USDT"] == (100 * 10**6, 0)
    assert [r.reason for r in view.rejections] == ["order is not open"]


def test_replayed_inbox_messages_have_no_effect(loop: Loop) -> None:
    loop.send(
        Credit(user_id="s", asset="BTC", amount=10**8, transfer_id="t", ts=1),
        Credit(user_id="b", asset="USDT", amount=10**9, transfer_id="t", ts=1),
        order("s", "s1", "sell", "50000", "5", ts=2),
        order("b", "b1", "buy", "50000", "5", ts=3),
    )
    loop.run()
    before = flow_view(loop)
    # Everything written to both inboxes arrives a second time, as after a crash.
    for message in list(loop.wallet_log):
        loop.append_wallet(message)
    for message in list(loop.book_log):
        loop.append_book(message)
    loop.run()
    after = flow_view(loop)
    assert after.balances == before.balances
    assert after.orders == before.orders
    assert after.trades == before.trades


def test_unprocessable_input_goes_to_dead_letters(loop: Loop) -> None:
    stray = BookOrder(
        market="XRP-USDT", src="u", seq=1, hold=1, order=order("u", "o", "buy", "1", "1")
    )
    loop.append_book(stray)
    loop.send(Credit(user_id="u", asset="USDT", amount=1, transfer_id="t", ts=1))
    loop.run()
    (dead,) = loop.written["deadletters"]
    assert isinstance(dead, DeadLetter)
    assert dead.topic == "book" and "XRP-USDT" in dead.reason
    assert flow_view(loop).balance_table() == {"u": {"USDT": (1, 0)}}  # the flow kept going


def test_demoted_machines_give_the_results_of_live_ones(tmp_path: Path) -> None:
    """With room for one live machine per step, every wallet is packed and dropped
    between its messages and every round resumes from the store: same results."""
    commands = funding(MARKETS) + trading(MARKETS, 300, seed=5)
    views = []
    for name, live in (("live", None), ("demoted", 1)):
        loop = Loop(MARKETS, tmp_path / name, live_machines=live)
        for start in range(0, len(commands), 50):
            loop.send(*commands[start : start + 50])
            loop.run()
        views.append(flow_view(loop))
    live_view, demoted_view = views
    assert demoted_view.orders == live_view.orders
    assert demoted_view.balances == live_view.balances
    assert demoted_view.trades == live_view.trades
    assert len(live_view.trades) >= 5
