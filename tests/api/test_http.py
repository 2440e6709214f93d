"""The REST API against a real broker and a real uvicorn server on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from crypton import topics
from crypton.client import ApiError, Client
from crypton.config import Settings
from crypton.domain.messages import (
    Balance,
    BalanceState,
    CancelAll,
    CancelOrder,
    Credit,
    Debit,
    DepthState,
    PlaceOrder,
    TransferState,
)

from .records import order_state, state_of, trade
from .support import ADMIN_TOKEN, ApiServer, ApiUser, StateWriter, read_wallet_inbox, wait_for

pytestmark = pytest.mark.integration

LIMIT = {
    "market": "BTC-USDT",
    "side": "buy",
    "type": "limit",
    "price": "50000",
    "quantity": "0.001",
}


def test_users_and_keys(admin_client: httpx.Client, api_server: ApiServer) -> None:
    with Client(api_server.url, ADMIN_TOKEN) as admin:
        created = admin.create_user("alice")
        assert created.user_id == "alice" and len(created.api_key) > 40
        with pytest.raises(ApiError) as taken:
            admin.create_user("alice")
        assert (taken.value.status, taken.value.code) == (409, "user_exists")
        for bad in ("_fees", "_x", "a/b", "x" * 65, "a b"):
            with pytest.raises(ApiError) as refused:
                admin.create_user(bad)
            assert (refused.value.status, refused.value.code) == (400, "invalid_request"), bad
        assert admin.create_user().user_id
    # An empty user_id is a malformed body, not "generate one": raw HTTP says so.
    assert admin_client.post("/v1/admin/users", json={"user_id": ""}).status_code == 400
    for key in (None, "wrong", created.api_key):  # a user key is not an admin token
        with Client(api_server.url, key) as other, pytest.raises(ApiError) as denied:
            other.create_user()
        assert denied.value.status == 401
    with Client(api_server.url, created.api_key) as alice:
        assert set(alice.balances()) >= {"BTC", "USDT"}


USER_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/balances", None),
    ("GET", "/v1/orders", None),
    ("GET", "/v1/orders/{order_id}", None),
    ("DELETE", "/v1/orders/{order_id}", None),
    ("DELETE", "/v1/orders", None),
    ("POST", "/v1/orders", LIMIT),
    ("GET", "/v1/fills", None),
    ("GET", "/v1/stream/me", None),
]


def test_every_user_route_needs_the_owners_key(
    api_server: ApiServer, new_user: Callable[..., ApiUser], state_writer: StateWriter
) -> None:
    alice, mallory = new_user("alice"), new_user("mallory")
    state_writer.send(topics.ORDERS, "o-alice", order_state("o-alice", user="alice"))
    state_writer.flush()
    wait_for(lambda: alice.client.get("/v1/orders/o-alice").status_code == 200)
    for method, path, body in USER_ROUTES:
        url = path.format(order_id="o-alice")
        for key in (None, "wrong-key", "Bearer", alice.api_key + "x"):
            with api_server.client(key) as client:
                response = client.request(method, url, json=body)
                assert response.status_code == 401, (method, url, key)
                assert response.json()["code"] == "unauthorized"
    # Another user's key: the order does not exist for them, and lists are their own.
    assert mallory.client.get("/v1/orders/o-alice").status_code == 404
    gone = mallory.client.delete("/v1/orders/o-alice")
    assert (gone.status_code, gone.json()["code"]) == (404, "order_not_found")
    assert mallory.client.get("/v1/orders?status=all").json()["items"] == []
    assert mallory.client.get("/v1/fills").json()["items"] == []
    assert alice.client.get("/v1/orders").json()["items"][0]["order_id"] == "o-alice"


def test_commands_land_on_the_wallet_inbox(
    settings: Settings,
    admin_client: httpx.Client,
    new_user: Callable[..., ApiUser],
    state_writer: StateWriter,
) -> None:
    alice = new_user("alice")
    placed = alice.client.post("/v1/orders", json={**LIMIT, "client_order_id": "c-1"})
    assert placed.status_code == 202, placed.text
    order = placed.json()
    assert (order["status"], order["client_order_id"], order["price"]) == (
        "PENDING",
        "c-1",
        "50000",
    )
    retried = alice.client.post("/v1/orders", json={**LIMIT, "client_order_id": "c-1"})
    assert retried.json()["order_id"] == order["order_id"]  # same order, not a new one
    market = alice.client.post(
        "/v1/orders", json={"market": "ETH-USDT", "side": "buy", "type": "market", "funds": "25.5"}
    )
    assert market.status_code == 202 and market.json()["time_in_force"] == "IOC"
    # The cancel needs the order to be known (from the state topic).
    state_writer.send(
        topics.ORDERS,
        order["order_id"],
        order_state(order["order_id"], user="alice", client_order_id="c-1"),
    )
    state_writer.flush()
    wait_for(lambda: alice.client.get(f"/v1/orders/{order['order_id']}").status_code == 200)
    assert alice.client.delete(f"/v1/orders/{order['order_id']}").status_code == 202
    cancel_all = alice.client.delete("/v1/orders", params={"market": "BTC-USDT"})
    assert cancel_all.status_code == 202 and cancel_all.json()["order_ids"] == [order["order_id"]]
    transfer = {"asset": "USDT", "amount": "1000.5", "transfer_id": "dep-1"}
    assert admin_client.post("/v1/admin/users/alice/credit", json=transfer).status_code == 202
    assert (
        admin_client.post(
            "/v1/admin/users/alice/debit", json={**transfer, "transfer_id": "wd-1"}
        ).status_code
        == 202
    )
    assert admin_client.post("/v1/admin/users/nobody/credit", json=transfer).status_code == 404

    records = read_wallet_inbox(settings, expect=7)
    assert {key for key, _ in records} == {"alice"}
    kinds = [type(cmd) for _, cmd in records]
    assert kinds == [PlaceOrder, PlaceOrder, PlaceOrder, CancelOrder, CancelAll, Credit, Debit]
    first, again, by_funds = (cmd for _, cmd in records[:3])
    assert isinstance(first, PlaceOrder) and isinstance(again, PlaceOrder)
    assert first.order_id == again.order_id  # the retry named the same order
    assert (first.price, first.quantity, first.order_id) == (
        50_000_000_000,
        100_000,
        order["order_id"],
    )
    assert isinstance(by_funds, PlaceOrder) and (by_funds.funds, by_funds.quantity) == (
        25_500_000,
        None,
    )
    credit = records[5][1]
    assert isinstance(credit, Credit) and (credit.amount, credit.transfer_id) == (
        1_000_500_000,
        "dep-1",
    )
    assert all(cmd.ts > 1_600_000_000_000 for _, cmd in records)  # ms since the epoch


def test_invalid_orders_never_reach_kafka(
    settings: Settings, new_user: Callable[..., ApiUser]
) -> None:
    alice = new_user("alice")
    bad = [
        {**LIMIT, "market": "NOPE-USDT"},
        {**LIMIT, "price": "50000.001"},
        {**LIMIT, "price": 50000.5},
        {**LIMIT, "quantity": "-1"},
        {**LIMIT, "post_only": True, "time_in_force": "IOC"},
        {"market": "BTC-USDT", "side": "buy", "type": "market", "quantity": "1"},
        {"market": "BTC-USDT", "side": "up", "type": "limit"},
        {},
    ]
    for body in bad:
        response = alice.client.post("/v1/orders", json=body)
        assert response.status_code == 400, body
        assert response.json()["code"] == "invalid_request" and response.json()["message"]
    not_json = alice.client.post(
        "/v1/orders", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400
    assert read_wallet_inbox(settings, expect=1, timeout=1.0) == []


def test_read_model_serves_the_state_topics(
    new_user: Callable[..., ApiUser], state_writer: StateWriter, admin_client: httpx.Client
) -> None:
    alice = new_user("alice")
    w = state_writer
    w.send(
        topics.ORDERS,
        "o1",
        order_state(
            "o1",
            version=2,
            status="PARTIALLY_FILLED",
            price=50_000_000_000,
            quantity=200_000,
            filled_quantity=100_000,
            filled_funds=50_000_000,
        ),
    )
    w.send(topics.ORDERS, "o1", order_state("o1", version=1, status="OPEN"))  # stale: ignored
    w.send(
        topics.BALANCES,
        "alice",
        BalanceState(
            user_id="alice", version=3, balances={"USDT": Balance(1_500_000, 2_000_000)}, ts=1
        ),
    )
    w.send(topics.BALANCES, "alice", BalanceState(user_id="alice", version=2, balances={}, ts=1))
    for seq in (1, 2, 2, 3):  # a re-emitted trade
        w.send(
            topics.TRADES,
            "BTC-USDT",
            trade(seq, price=50_000_000_000 + seq * 10_000, quantity=10_000, time=60_000 * seq),
        )
    w.send(
        topics.DEPTH,
        "BTC-USDT",
        DepthState(
            market="BTC-USDT",
            seq=9,
            bids=[(49_999_990_000, 30_000)],
            asks=[(50_000_010_000, 5_000)],
            ts=5,
        ),
    )
    w.flush()
    wait_for(lambda: alice.client.get("/v1/balances").json()["USDT"]["held"] == "2")
    # Each state topic is read on its own: the order and the depth may land after the
    # balance (a loaded CI machine saw the order 404 here).
    wait_for(lambda: alice.client.get("/v1/orders/o1").status_code == 200)
    got = alice.client.get("/v1/orders/o1").json()
    assert (got["status"], got["filled_quantity"], got["average_price"], got["quantity"]) == (
        "PARTIALLY_FILLED",
        "0.001",
        "50000",
        "0.002",
    )
    assert alice.client.get("/v1/balances").json()["USDT"] == {"available": "1.5", "held": "2"}
    wait_for(lambda: len(alice.client.get("/v1/markets/BTC-USDT/trades").json()["items"]) == 3)
    trades = alice.client.get("/v1/markets/BTC-USDT/trades", params={"limit": 2}).json()
    assert [t["seq"] for t in trades["items"]] == [3, 2] and trades["next_cursor"] == "2"
    assert trades["items"][0]["price"] == "50000.03" and trades["items"][0]["quantity"] == "0.0001"
    older = alice.client.get("/v1/markets/BTC-USDT/trades", params={"before_seq": 2}).json()
    assert [t["seq"] for t in older["items"]] == [1] and older["next_cursor"] is None
    wait_for(lambda: alice.client.get("/v1/markets/BTC-USDT/depth").json().get("seq") == 9)
    depth = alice.client.get("/v1/markets/BTC-USDT/depth").json()
    assert depth == {
        "market": "BTC-USDT",
        "seq": 9,
        "bids": [["49999.99", "0.0003"]],
        "asks": [["50000.01", "0.00005"]],
        "time": 5,
    }
    candles = alice.client.get("/v1/markets/BTC-USDT/candles", params={"interval": "1h"}).json()[
        "items"
    ]
    assert (
        len(candles) == 1 and candles[0]["open"] == "50000.01" and candles[0]["close"] == "50000.03"
    )
    assert candles[0]["volume"] == "0.0003" and candles[0]["trades"] == 3
    assert len(alice.client.get("/v1/markets/BTC-USDT/candles").json()["items"]) == 3
    fills = alice.client.get("/v1/fills").json()["items"]
    newest = fills[0]
    assert (newest["seq"], newest["liquidity"], newest["side"]) == (3, "maker", "sell")
    assert (newest["fee"], newest["fee_asset"], newest["quantity"]) == (
        "0.000001",
        "USDT",
        "0.0001",
    )
    assert alice.client.get("/v1/markets/NOPE/trades").status_code == 404
    assert admin_client.get("/v1/admin/users/alice/balances").json()["USDT"]["held"] == "2"


def test_wait_true_reads_your_writes(
    settings: Settings,
    admin_client: httpx.Client,
    new_user: Callable[..., ApiUser],
    state_writer: StateWriter,
) -> None:
    """?wait=true returns once the dataflow's answer is in (an order's from the book, not
    the wallet's NEW), here written by the test in the dataflow's place as soon as the
    command shows up on the inbox."""
    alice = new_user("alice")
    results: dict[str, httpx.Response] = {}

    def post(name: str, client: httpx.Client, url: str, body: dict[str, Any]) -> None:
        results[name] = client.post(url, json=body, params={"wait": "true"})

    threads = [
        threading.Thread(
            target=post,
            args=("order", alice.client, "/v1/orders", {**LIMIT, "client_order_id": "w1"}),
        ),
        threading.Thread(
            target=post,
            args=(
                "debit",
                admin_client,
                "/v1/admin/users/alice/debit",
                {"asset": "BTC", "amount": "1", "transfer_id": "wd"},
            ),
        ),
    ]
    for t in threads:
        t.start()
    commands = [cmd for _, cmd in read_wallet_inbox(settings, expect=2)]
    for cmd in commands:
        if isinstance(cmd, PlaceOrder):
            # The wallet's NEW first, on its own: ?wait=true waits past it for the book's.
            state_writer.send(topics.ORDERS, cmd.order_id, state_of(cmd, status="NEW"))
            state_writer.flush()
            time.sleep(0.5)
            state_writer.send(topics.ORDERS, cmd.order_id, state_of(cmd, version=2, status="OPEN"))
        elif isinstance(cmd, Debit):
            state_writer.send(
                topics.TRANSFERS,
                f"alice/{cmd.transfer_id}",
                TransferState(
                    user_id="alice",
                    transfer_id=cmd.transfer_id,
                    direction="debit",
                    asset="BTC",
                    amount=cmd.amount,
                    status="REJECTED",
                    reason="insufficient funds: 0 available",
                    ts=cmd.ts,
                ),
            )
    state_writer.flush()
    for t in threads:
        t.join(10)
    assert results["order"].status_code == 200 and results["order"].json()["status"] == "OPEN"
    debit = results["debit"].json()
    assert results["debit"].status_code == 200
    assert (debit["status"], debit["reason"]) == ("REJECTED", "insufficient funds: 0 available")
    # A repeated transfer_id is answered from the log, not written again.
    again = admin_client.post(
        "/v1/admin/users/alice/debit", json={"asset": "BTC", "amount": "1", "transfer_id": "wd"}
    )
    assert again.status_code == 200 and again.json()["status"] == "REJECTED"
    other = admin_client.post(
        "/v1/admin/users/alice/debit", json={"asset": "BTC", "amount": "2", "transfer_id": "wd"}
    )
    assert (other.status_code, other.json()["code"]) == (409, "transfer_conflict")
    # A known client_order_id answers the original order at once; with other terms, a 409.
    repeat = alice.client.post("/v1/orders", json={**LIMIT, "client_order_id": "w1"})
    assert repeat.status_code == 200 and repeat.json()["price"] == "50000"
    other = alice.client.post(
        "/v1/orders", json={**LIMIT, "client_order_id": "w1", "price": "49000"}
    )
    assert (other.status_code, other.json()["code"]) == (409, "order_conflict")
    assert len(read_wallet_inbox(settings, expect=3, timeout=1.0)) == 2


def test_closed_orders_cannot_be_canceled(
    new_user: Callable[..., ApiUser], state_writer: StateWriter
) -> None:
    alice = new_user("alice")
    state_writer.send(topics.ORDERS, "done", order_state("done", user="alice", status="FILLED"))
    state_writer.flush()
    wait_for(lambda: alice.client.get("/v1/orders/done").status_code == 200)
    response = alice.client.delete("/v1/orders/done")
    assert (response.status_code, response.json()["code"]) == (409, "order_closed")
    assert alice.client.get("/v1/orders", params={"status": "open"}).json()["items"] == []


def test_errors_have_a_code_and_a_message(api_server: ApiServer) -> None:
    with api_server.client() as client:
        for method, url, status in [
            ("GET", "/v1/nothing", 404),
            ("PUT", "/v1/markets", 405),
            ("GET", "/v1/markets/NOPE-USDT/depth", 404),
            ("GET", "/v1/markets/BTC-USDT/depth?levels=0", 400),
            ("GET", "/v1/markets/BTC-USDT/candles?interval=2m", 400),
        ]:
            response = client.request(method, url)
            assert response.status_code == status, url
            body = response.json()
            assert body["code"] and body["message"], body
        markets = client.get("/v1/markets").json()["items"]
        btc = next(m for m in markets if m["market"] == "BTC-USDT")
        assert (btc["tick"], btc["step"], btc["min_notional"], btc["taker_fee_bps"]) == (
            "0.01",
            "0.0001",
            "5",
            20,
        )
        assert client.get("/health").json()["status"] == "ok"
        metrics = client.get("/metrics").text
        assert (
            'crypton_api_requests_total{method="GET",route="/v1/markets",status="200"}' in metrics
        )
        assert "crypton_api_readmodel_lag" in metrics
