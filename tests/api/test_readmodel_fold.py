"""The read model's fold (``crypton.readmodel``): highest version wins, trades dedupe,
candles, listing and paging. Pure: no broker."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from api._sse import format_user_cursor, parse_market_cursor, parse_user_cursor
from crypton.candles import CandleSeries
from crypton.domain.messages import Balance, BalanceState, DepthState, TransferState
from crypton.readmodel import ReadModel, TradeLog
from crypton.users import UserState

from .records import order_state as order
from .records import trade


def test_orders_keep_the_highest_version_whatever_the_arrival_order() -> None:
    states = [order(version=v, status="FILLED" if v == 3 else "OPEN") for v in (1, 2, 3)]
    for permutation in ([0, 1, 2], [2, 1, 0], [1, 2, 0, 0, 2, 1]):
        model = ReadModel()
        for i in permutation:
            model.apply_order(states[i])
        state = model.order("o1")
        assert state is not None and state.version == 3
        assert model.open_orders("alice") == []
        assert [
            o.order_id
            for o in model.list_orders(
                "alice", open_only=False, market=None, limit=10, cursor=None
            ).items
        ] == ["o1"]


def test_repeated_record_is_not_a_change() -> None:
    model = ReadModel()
    assert model.apply_order(order(version=1))
    assert not model.apply_order(order(version=1))
    assert model.apply_balance(
        BalanceState(user_id="a", version=1, balances={"BTC": Balance(5, 1)}, ts=0)
    )
    assert not model.apply_balance(BalanceState(user_id="a", version=1, balances={}, ts=0))
    balance = model.balance("a")
    assert balance is not None and balance.balances["BTC"] == Balance(5, 1)
    assert model.apply_depth(DepthState(market="M", seq=4, bids=[(1, 1)], asks=[], ts=0))
    assert not model.apply_depth(DepthState(market="M", seq=3, bids=[], asks=[], ts=0))
    assert model.depth["M"].bids == [(1, 1)]


def test_transfer_outcome_is_final() -> None:
    model = ReadModel()
    first = TransferState(
        user_id="a",
        transfer_id="t",
        direction="debit",
        asset="BTC",
        amount=5,
        status="REJECTED",
        reason="insufficient",
        ts=1,
    )
    assert model.apply_transfer(first)
    assert not model.apply_transfer(
        TransferState(
            user_id="a",
            transfer_id="t",
            direction="debit",
            asset="BTC",
            amount=5,
            status="ACCEPTED",
            ts=2,
        )
    )
    transfer = model.transfer("a", "t")
    assert transfer is not None and transfer.status == "REJECTED"


def test_trades_are_deduplicated_by_market_and_seq() -> None:
    model = ReadModel()
    for seq in [1, 2, 3, 2, 1, 3, 4]:  # a sink replay after a crash re-emits 1..3
        model.apply_trade(trade(seq))
    model.apply_trade(trade(1, market="ETH-USDT"))  # same seq, another market: a new trade
    assert [t.seq for t in model.trade_log("BTC-USDT").before(None, 10)] == [4, 3, 2, 1]
    assert len(model.trade_log("ETH-USDT").before(None, 10)) == 1
    candle = model.candle_list("BTC-USDT", "1m", 5)[0]
    assert (candle.trades, candle.volume) == (4, 4)
    fills = model.fills("alice", market=None, limit=100, cursor=None).items
    assert len(fills) == 5 and {f.liquidity for f in fills} == {"maker"}
    assert {
        (f.side, f.fee) for f in model.fills("bob", market=None, limit=100, cursor=None).items
    } == {("buy", 2)}


def test_trade_log_window_and_resume() -> None:
    log = TradeLog(window=3)
    for seq in range(1, 6):
        assert log.add(trade(seq))
    assert not log.add(trade(1))  # evicted but still a duplicate
    assert [t.seq for t in log.before(None, 10)] == [5, 4, 3]
    assert [t.seq for t in log.before(5, 1)] == [4]
    assert [t.seq for t in log.after(3) or []] == [4, 5]
    assert log.after(1) is None  # 2 is gone: the caller must resync
    assert log.after(5) == []


def test_late_trade_fills_the_gap_in_order() -> None:
    log = TradeLog()
    for seq in (1, 3, 2):
        log.add(trade(seq))
    assert [t.seq for t in log.after(0) or []] == [1, 2, 3]


def test_candles_ohlcv() -> None:
    series = CandleSeries(60_000)
    trades = [
        trade(2, 110, 2, 5_000),
        trade(1, 100, 1, 1_000),
        trade(3, 90, 3, 59_999),
        trade(4, 95, 1, 60_000),
    ]
    for t in trades:
        series.add(t)
    first, second = series.last(10)
    # Open/close by sequence, not by arrival: seq 1 arrived second.
    assert (first.start, first.open, first.high, first.low, first.close) == (0, 100, 110, 90, 90)
    assert (first.volume, first.quote_volume, first.trades) == (
        6,
        sum(t.notional for t in trades[:3]),
        3,
    )
    assert (second.start, second.open, second.close, second.trades) == (60_000, 95, 95, 1)
    assert series.last(1) == [second]
    assert series.last(10, before=60_000) == [first]


@settings(max_examples=50)
@given(
    st.lists(
        st.tuples(st.integers(1, 30), st.integers(1, 1000), st.integers(0, 10**7)),
        min_size=1,
        max_size=60,
    )
)
def test_candles_match_a_recomputation(raw: list[tuple[int, int, int]]) -> None:
    trades = {seq: trade(seq, price, 1, time) for seq, price, time in raw}
    arrivals = list(trades.values()) * 2
    random.Random(0).shuffle(arrivals)
    model = ReadModel()
    for t in arrivals:
        model.apply_trade(t)
    for candle in model.candle_list("BTC-USDT", "5m", 10_000):
        inside = sorted(
            (t for t in trades.values() if candle.start <= t.time < candle.start + 300_000),
            key=lambda t: t.seq,
        )
        assert candle.open == inside[0].price and candle.close == inside[-1].price
        assert candle.high == max(t.price for t in inside) and candle.low == min(
            t.price for t in inside
        )
        assert candle.trades == len(inside)
    assert sum(c.trades for c in model.candle_list("BTC-USDT", "1h", 10_000)) == len(trades)


def test_order_listing_pages_newest_first_and_filters() -> None:
    model = ReadModel()
    for i in range(7):
        model.apply_order(
            order(
                f"o{i}",
                created=i,
                status="FILLED" if i % 2 else "OPEN",
                market="ETH-USDT" if i == 4 else "BTC-USDT",
            )
        )
    model.apply_order(order("x", user="bob"))
    seen, cursor = [], None
    while True:
        page = model.list_orders("alice", open_only=False, market=None, limit=3, cursor=cursor)
        seen += [o.order_id for o in page.items]
        if page.next_cursor is None:
            break
        created, _, oid = page.next_cursor.partition(".")
        cursor = (int(created), oid)
    assert seen == [f"o{i}" for i in range(6, -1, -1)]
    opened = model.list_orders("alice", open_only=True, market="BTC-USDT", limit=10, cursor=None)
    assert [o.order_id for o in opened.items] == ["o6", "o2", "o0"]
    assert model.order_of("alice", "x") is None and model.order_of("bob", "x") is not None
    assert model.order_by_client_id("alice", "c-o3") is not None


def test_users_fold_and_key_rotation() -> None:
    model = ReadModel()
    assert model.apply_user(UserState(user_id="a", key_hashes=["h1"], created_at=0, version=1))
    # Same version from a racing replica: the first in the log wins.
    assert not model.apply_user(UserState(user_id="a", key_hashes=["h2"], created_at=0, version=1))
    assert model.user_by_key_hash("h1") == "a" and model.user_by_key_hash("h2") is None
    assert model.apply_user(UserState(user_id="a", key_hashes=["h3"], created_at=0, version=2))
    assert model.user_by_key_hash("h1") is None and model.user_by_key_hash("h3") == "a"


def test_stream_cursors_round_trip() -> None:
    cursor = {("order", 0): 12, ("order", 3): -1, ("balance", 1): 7}
    known = {("order", p) for p in range(4)} | {("balance", p) for p in range(4)}
    assert parse_user_cursor(format_user_cursor(cursor), known) == cursor
    assert parse_user_cursor("garbage", known) is None and parse_user_cursor("", known) is None
    assert parse_market_cursor("12:7") == (12, 7) and parse_market_cursor("x") is None


def test_stream_cursors_refuse_what_the_api_did_not_write() -> None:
    known = {("order", 0), ("balance", 0)}
    assert parse_user_cursor("o0=1,b0=2", known) == {("order", 0): 1, ("balance", 0): 2}
    for made_up in ("o1=1", "o0=1,o0=2", "o0=1\n", ",".join(["o0=1"] * 1000), "o0=1," * 900):
        assert parse_user_cursor(made_up, known) is None, made_up
    assert parse_market_cursor("1:2\n") is None and parse_market_cursor("1:" + "9" * 20) is None
