"""What a client library expects: server time, tickers, candle ranges, trades since a time,
orders by client_order_id, reason codes and fill events on the user stream."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest

from crypton import topics
from crypton.domain.messages import DepthState

from .records import order_state, trade
from .support import ApiServer, ApiUser, StateWriter, wait_for
from .test_sse import stream

pytestmark = pytest.mark.integration

HOUR = 3_600_000


def test_time_ticker_candles_and_trades_since(
    api_server: ApiServer, state_writer: StateWriter
) -> None:
    now = int(time.time() * 1000)
    w = state_writer
    prices = {1: 50_000_000_000, 2: 51_000_000_000, 3: 49_000_000_000, 4: 52_000_000_000}
    times = {1: now - 30 * HOUR, 2: now - 20 * HOUR, 3: now - 2 * HOUR, 4: now - 60_000}
    for seq, price in prices.items():
        w.send(topics.TRADES, "BTC-USDT", trade(seq, price=price, quantity=10_000, time=times[seq]))
    w.send(
        topics.DEPTH,
        "BTC-USDT",
        DepthState(market="BTC-USDT", seq=3, bids=[(49_000_000_000, 1)], asks=[], ts=now),
    )
    w.flush()
    with api_server.client() as client:
        wait_for(lambda: len(client.get("/v1/markets/BTC-USDT/trades").json()["items"]) == 4)
        server = client.get("/v1/time").json()["time"]
        assert abs(server - int(time.time() * 1000)) < 60_000

        ticker = client.get("/v1/markets/BTC-USDT/ticker").json()
        assert {k: ticker[k] for k in ("last", "bid", "ask", "open", "high", "low")} == {
            "last": "52000", "bid": "49000", "ask": None, "open": "51000", "high": "52000",
            "low": "49000",
        }  # fmt: skip
        assert (ticker["volume"], ticker["trades"], ticker["change_percent"]) == (
            "0.0003", 3, "1.96",
        )  # fmt: skip
        tickers = {t["market"]: t for t in client.get("/v1/tickers").json()["items"]}
        assert tickers["BTC-USDT"]["last"] == "52000"
        quiet = tickers["ETH-USDT"]
        assert (quiet["last"], quiet["open"], quiet["change_percent"], quiet["volume"]) == (
            None, None, None, "0",
        )  # fmt: skip
        assert client.get("/v1/markets/NOPE/ticker").status_code == 404

        for interval in ("1m", "5m", "15m", "1h", "4h", "1d", "1w"):
            got = client.get("/v1/markets/BTC-USDT/candles", params={"interval": interval})
            assert got.status_code == 200, (interval, got.text)
            assert sum(c["trades"] for c in got.json()["items"]) == 4
        for bad in ({"interval": "2m"}, {"start": "x"}, {"end": str(2**60)}):
            got = client.get("/v1/markets/BTC-USDT/candles", params=bad)
            assert got.status_code == 400, (bad, got.text)
        empty = client.get("/v1/markets/BTC-USDT/candles", params={"start": 10, "end": 5})
        assert empty.status_code == 200 and empty.json()["items"] == []
        ranged = client.get(
            "/v1/markets/BTC-USDT/candles",
            params={"interval": "1h", "start": times[2] - HOUR, "end": times[4] - HOUR},
        ).json()["items"]
        assert [c["open"] for c in ranged] == ["51000", "49000"]
        first = client.get(
            "/v1/markets/BTC-USDT/candles", params={"interval": "1m", "start": 0, "limit": 1}
        ).json()["items"]
        assert [c["open"] for c in first] == ["50000"]

        since = client.get(
            "/v1/markets/BTC-USDT/trades", params={"since": times[2], "limit": 2}
        ).json()
        assert [t["seq"] for t in since["items"]] == [2, 3] and since["next_cursor"] == "3"
        rest = client.get(
            "/v1/markets/BTC-USDT/trades", params={"after_seq": since["next_cursor"]}
        ).json()
        assert [t["seq"] for t in rest["items"]] == [4] and rest["next_cursor"] is None
        bounded = client.get("/v1/markets/BTC-USDT/trades", params={"since": 0, "before_seq": 3})
        assert [t["seq"] for t in bounded.json()["items"]] == [1, 2]


def test_orders_by_client_order_id(
    new_user: Callable[..., ApiUser], state_writer: StateWriter
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    state_writer.send(topics.ORDERS, "o1", order_state("o1", user="alice"))
    state_writer.send(
        topics.ORDERS,
        "o2",
        order_state(
            "o2", user="alice", status="REJECTED", reason="insufficient USDT",
            reason_code="insufficient_funds",
        ),
    )  # fmt: skip
    state_writer.flush()
    # o1 and o2 are keyed apart, so they may sit on different partitions of
    # the orders topic: seeing one says nothing about the other.
    wait_for(
        lambda: all(
            alice.client.get(f"/v1/orders/by-client-id/{client_id}").status_code == 200
            for client_id in ("c-o1", "c-o2")
        )
    )
    got = alice.client.get("/v1/orders/by-client-id/c-o1").json()
    assert (got["order_id"], got["client_order_id"], got["reason_code"]) == ("o1", "c-o1", None)
    rejected = alice.client.get("/v1/orders/by-client-id/c-o2").json()
    assert (rejected["status"], rejected["reason_code"]) == ("REJECTED", "insufficient_funds")
    # Another user's client_order_id is a 404, for reading and for cancelling.
    assert bob.client.get("/v1/orders/by-client-id/c-o1").status_code == 404
    assert bob.client.delete("/v1/orders/by-client-id/c-o1").status_code == 404
    closed = alice.client.delete("/v1/orders/by-client-id/c-o2")
    assert closed.status_code == 409 and closed.json()["reason_code"] == "order_not_open"
    assert alice.client.get("/v1/orders/by-client-id/bad%20id").status_code == 400
    canceled = alice.client.delete("/v1/orders/by-client-id/c-o1")
    assert canceled.status_code == 202 and canceled.json()["order_id"] == "o1"


def test_invalid_orders_carry_the_domains_reason_code(
    new_user: Callable[..., ApiUser],
) -> None:
    alice = new_user("alice")
    cases = {
        "invalid_tick": {"price": "50000.001", "quantity": "0.001"},
        "invalid_step": {"price": "50000", "quantity": "0.00015"},
        "below_min_notional": {"price": "1", "quantity": "1"},
        "unknown_market": {"market": "NOPE-USDT", "price": "1", "quantity": "1"},
    }
    for code, fields in cases.items():
        body = {"market": "BTC-USDT", "side": "buy", "type": "limit", **fields}
        got = alice.client.post("/v1/orders", json=body)
        assert got.status_code == 400, got.text
        assert got.json()["reason_code"] == code, got.text


def test_fills_on_the_user_stream(
    api_server: ApiServer, new_user: Callable[..., ApiUser], state_writer: StateWriter
) -> None:
    alice = new_user("alice")
    w = state_writer
    w.send(topics.ORDERS, "m", order_state("m", user="alice", client_order_id="mine"))
    w.flush()
    with stream(api_server, "/v1/stream/me", alice.api_key) as events:
        events.until_live()
        w.send(topics.TRADES, "BTC-USDT", trade(1, price=50_000_000_000, quantity=10_000, time=7))
        w.send(topics.TRADES, "BTC-USDT", trade(2, maker_user_id="carol", taker_user_id="dan"))
        w.send(topics.TRADES, "BTC-USDT", trade(1, price=50_000_000_000, quantity=10_000, time=7))
        w.flush()
        while (event := events.next_data()).event != "fill":
            pass
        fill = json.loads(event.data)
        assert fill == {
            "seq": 1, "market": "BTC-USDT", "order_id": "m", "client_order_id": "mine",
            "side": "sell", "liquidity": "maker", "price": "50000", "quantity": "0.0001",
            "funds": "5", "fee": "0.000001", "fee_asset": "USDT", "time": 7,
        }  # fmt: skip
        resume = event.id
    assert resume and "t" in resume
    # Resuming after the fill replays nothing of it; other users' trades never show.
    w.send(topics.TRADES, "BTC-USDT", trade(3, maker_order_id="m", quantity=2, time=9))
    w.flush()
    with stream(api_server, "/v1/stream/me", alice.api_key, resume) as events:
        while (event := events.next_data()).event != "fill":
            pass
        assert json.loads(event.data)["seq"] == 3


def test_timestamps_are_named_time_or_at(api_server: ApiServer) -> None:
    """The naming rule of docs/api.md: every moment is ms since the epoch in a field named
    ``time``, ``start``/``end`` or ``<event>_at``; no ``ts``."""
    with httpx.Client(base_url=api_server.url) as client:
        schema = client.get("/schema/openapi.json").json()
    names = set()
    for component in schema["components"]["schemas"].values():
        names |= set(component.get("properties", {}))
    assert "ts" not in names
