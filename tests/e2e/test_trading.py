"""End to end on loopback: real broker, real dataflow process, real uvicorn, real HTTP client.

Two users trade across a market; fills, balances, depth, trades, candles and
server-sent events all agree; a cancel releases exactly the held funds.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from crypton.config import Settings
from crypton.process import Child
from tests.api.support import ApiServer, ApiUser
from tests.dataflows.kafka_support import start_dataflow, wait_clean_audit

pytestmark = pytest.mark.integration


def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns a truthy value; the read model is eventually consistent."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


class Stream(threading.Thread):
    """Collects the events of one SSE endpoint in the background."""

    def __init__(self, server: ApiServer, path: str, key: str | None = None) -> None:
        super().__init__(daemon=True)
        self.client = server.client(key, timeout=60)
        self.path = path
        self.events: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()
        self.start()

    def run(self) -> None:
        try:
            with connect_sse(self.client, "GET", self.path) as source:
                for event in source.iter_sse():
                    if event.data:
                        self.events.put((event.event, event.id, json.loads(event.data)))
        except httpx.HTTPError:
            return

    def drain(self) -> list[tuple[str, str, dict[str, Any]]]:
        out = []
        while not self.events.empty():
            out.append(self.events.get())
        return out


def balances(user: ApiUser) -> dict[str, tuple[Decimal, Decimal]]:
    """The user's non-zero balances (the API lists every asset, zeros included)."""
    body = user.client.get("/v1/balances").raise_for_status().json()
    return nonzero(body)


def nonzero(table: dict[str, dict[str, str]]) -> dict[str, tuple[Decimal, Decimal]]:
    rows = {a: (Decimal(b["available"]), Decimal(b["held"])) for a, b in table.items()}
    return {a: row for a, row in rows.items() if any(row)}


def test_two_users_trade_and_every_view_agrees(
    settings: Settings,
    spawn: Callable[..., Child],
    api_server: ApiServer,
    admin_client: httpx.Client,
    new_user: Callable[..., ApiUser],
) -> None:
    start_dataflow(spawn, settings)
    alice, bob = new_user("alice"), new_user("bob")
    for user, asset, amount in ((alice, "BTC", "1"), (bob, "USDT", "100000")):
        done = admin_client.post(
            f"/v1/admin/users/{user.user_id}/credit?wait=true",
            json={"asset": asset, "amount": amount, "transfer_id": "fund-1"},
        )
        assert done.status_code in (200, 202), done.text
        assert done.json()["status"] == "ACCEPTED", done.text
    mine = Stream(api_server, "/v1/stream/me", bob.api_key)
    market = Stream(api_server, "/v1/stream/markets/BTC-USDT")
    time.sleep(0.5)  # both streams connected before anything happens

    ask = alice.client.post("/v1/orders?wait=true", json={
        "market": "BTC-USDT", "side": "sell", "type": "limit", "price": "50000",
        "quantity": "0.5", "client_order_id": "ask-1",
    })  # fmt: skip
    assert ask.status_code in (200, 202), ask.text
    ask_id = ask.json()["order_id"]
    eventually(lambda: alice.client.get(f"/v1/orders/{ask_id}").json()["status"] == "OPEN")
    bid = bob.client.post("/v1/orders?wait=true", json={
        "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "50100",
        "quantity": "0.2", "time_in_force": "IOC", "client_order_id": "bid-1",
    })  # fmt: skip
    bid_id = bid.json()["order_id"]
    filled = eventually(
        lambda: (o := bob.client.get(f"/v1/orders/{bid_id}").json())["status"] == "FILLED" and o
    )
    # 0.2 BTC at the maker's 50,000 = 10,000 USDT; taker fee 0.2% = 20, maker fee 0.1% = 10.
    assert Decimal(filled["filled_quantity"]) == Decimal("0.2")
    assert Decimal(filled["average_price"]) == Decimal("50000")
    assert Decimal(filled["fee"]) == Decimal("20")

    trades = eventually(
        lambda: api_server.client().get("/v1/markets/BTC-USDT/trades?limit=10").json()["items"]
    )
    assert len(trades) == 1
    (trade,) = trades
    assert (Decimal(trade["price"]), Decimal(trade["quantity"]), trade["taker_side"]) == (
        Decimal("50000"),
        Decimal("0.2"),
        "buy",
    )
    assert (trade["maker_order_id"], trade["taker_order_id"]) == (ask_id, bid_id)

    depth = api_server.client().get("/v1/markets/BTC-USDT/depth?levels=5").json()
    assert [[Decimal(p), Decimal(q)] for p, q in depth["asks"]] == [[50000, Decimal("0.3")]]
    assert depth["bids"] == []

    candles = api_server.client().get("/v1/markets/BTC-USDT/candles?interval=1m").json()["items"]
    assert len(candles) == 1
    candle = candles[0]
    assert [Decimal(candle[k]) for k in ("open", "high", "low", "close", "volume")] == [
        50000,
        50000,
        50000,
        50000,
        Decimal("0.2"),
    ]

    fills = bob.client.get("/v1/fills").json()["items"]
    assert len(fills) == 1 and Decimal(fills[0]["fee"]) == Decimal("20")

    assert eventually(
        lambda: (
            balances(bob) == {"USDT": (Decimal("89980"), 0), "BTC": (Decimal("0.2"), 0)} and True
        )
    )
    assert eventually(
        lambda: (
            balances(alice)
            == {"BTC": (Decimal("0.5"), Decimal("0.3")), "USDT": (Decimal("9990"), 0)}
            and True
        )
    )

    # Cancel the rest of the ask: exactly the 0.3 BTC still held comes back.
    cancel = alice.client.delete(f"/v1/orders/{ask_id}")
    assert cancel.status_code in (200, 202), cancel.text
    assert eventually(lambda: balances(alice)["BTC"] == (Decimal("0.8"), 0))
    assert alice.client.get(f"/v1/orders/{ask_id}").json()["status"] == "CANCELED"
    again = alice.client.delete(f"/v1/orders/{ask_id}")
    assert again.status_code in (404, 409), again.text
    time.sleep(1)
    assert balances(alice)["BTC"] == (Decimal("0.8"), 0)

    # The pushed events tell the same story as the pulled state.
    time.sleep(1)
    pushed = mine.drain()
    orders = [e[2] for e in pushed if e[0] == "order" and e[2]["order_id"] == bid_id]
    assert orders and orders[-1]["status"] == "FILLED"
    last_balance = [e[2] for e in pushed if e[0] == "balance"][-1]
    assert nonzero(last_balance) == balances(bob)
    market_events = market.drain()
    pushed_trades = [e[2] for e in market_events if e[0] == "trade"]
    assert [t["seq"] for t in pushed_trades] == [trade["seq"]]
    pushed_depth = [e[2] for e in market_events if e[0] == "depth"]
    assert pushed_depth and pushed_depth[-1]["asks"] == []

    report = wait_clean_audit(settings)
    assert report.clean, "\n".join(report.lines)
