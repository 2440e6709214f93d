"""What a hostile but legitimate tester found in the API (issue 11), one test per finding.
Real broker, real uvicorn on loopback; every loop is bounded."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from crypton import topics
from crypton.config import Settings
from crypton.domain.messages import CancelAll

from .records import order_state
from .support import (
    ADMIN_TOKEN,
    ApiServer,
    ApiUser,
    StateWriter,
    read_wallet_inbox,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_an_empty_or_encoded_order_id_cancels_nothing(
    settings: Settings, new_user: Callable[..., ApiUser], state_writer: StateWriter
) -> None:
    alice = new_user("alice")
    state_writer.send(topics.ORDERS, "o-1", order_state("o-1", user="alice"))
    state_writer.flush()
    wait_for(lambda: alice.client.get("/v1/orders/o-1").status_code == 200)
    for method, path in [
        ("DELETE", "/v1/orders/"),
        ("DELETE", "/v1/orders//"),
        ("DELETE", "/v1/orders/%2F"),
        ("DELETE", "/v1/orders/%2f"),
        ("DELETE", "/v1/orders"),  # neither market nor all=true
        ("DELETE", "/v1/orders?market=BTC-USDT&all=true"),
        ("GET", "/v1/orders/%2F"),
        ("GET", "/v1/orders/"),
        ("GET", "/v1/orders//o-1"),
    ]:
        response = alice.client.request(method, path)
        assert response.status_code == 400, (method, path, response.text)
        assert response.json()["code"] == "invalid_request"
    assert read_wallet_inbox(settings, expect=1, timeout=1.0) == []
    # Cancelling everything is its own explicit request.
    everything = alice.client.delete("/v1/orders", params={"all": "true"})
    assert everything.status_code == 202, everything.text
    assert everything.json()["order_ids"] == ["o-1"]
    [(_, command)] = read_wallet_inbox(settings, expect=1)
    assert isinstance(command, CancelAll) and command.market is None


ORDER = {
    "market": "BTC-USDT",
    "side": "buy",
    "type": "limit",
    "price": "50000",
    "quantity": "0.001",
}
JSON = {"content-type": "application/json"}
CREDIT = "/v1/admin/users/alice/credit"


def test_deep_nesting_is_a_400_after_authentication_and_bodies_are_capped(
    api_server: ApiServer, new_user: Callable[..., ApiUser]
) -> None:
    alice = new_user("alice")
    nested = "[" * 1000 + "]" * 1000
    with api_server.client() as anonymous:
        response = anonymous.post("/v1/orders", content=nested, headers=JSON)
        assert response.status_code == 401, response.text
        huge = anonymous.post("/v1/orders", content=b"[" * 1_000_000, headers=JSON)
        assert huge.status_code == 401
    response = alice.client.post("/v1/orders", content=nested, headers=JSON)
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")
    admin = api_server.client(ADMIN_TOKEN)
    for path in ("/v1/admin/users", "/v1/admin/users/alice/credit"):
        response = admin.post(path, content="{" * 500, headers=JSON)
        assert response.status_code == 400, (path, response.text)
    too_big = {**ORDER, "client_order_id": "c-1", "padding": " " * 3000}
    assert alice.client.post("/v1/orders", json=too_big).status_code == 413
    log = api_server.log_path.read_text()
    assert "Traceback" not in log and "RecursionError" not in log


def test_lenient_bodies_are_refused_with_the_reason(
    api_server: ApiServer, new_user: Callable[..., ApiUser]
) -> None:
    alice = new_user("alice")
    admin = api_server.client(ADMIN_TOKEN)
    cases: list[tuple[object, str, str | None]] = [
        ({**ORDER, "client_order_id": "c-1\n"}, "/v1/orders", "client_order_id"),
        ({**ORDER, "post_only": "true"}, "/v1/orders", "post_only"),
        ({**ORDER, "post_only": 1}, "/v1/orders", "post_only"),
        ({**ORDER, "price": "50000\n"}, "/v1/orders", "price"),
        ({"asset": "USDT", "amount": "1", "transfer_id": "t-1\n"}, CREDIT, "transfer_id"),
        ({"asset": "USDT\n", "amount": "1", "transfer_id": "t-1"}, CREDIT, "asset"),
        ({"user_id": "bob\n"}, "/v1/admin/users", "user_id"),
    ]  # fmt: skip
    for body, path, field in cases:
        client = alice.client if path == "/v1/orders" else admin
        response = client.post(path, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["field"] == field, (body, response.text)
    # Two markets: the last one used to win.
    twice = b'{"market":"ETH-USDT",' + msgspec.json.encode(ORDER)[1:]
    response = alice.client.post("/v1/orders", content=twice, headers=JSON)
    assert (response.status_code, response.json()["field"]) == (400, "market"), response.text
    body = msgspec.json.encode(ORDER)
    for headers in (
        {"content-type": "text/plain"},
        {},
        {"content-type": "application/x-www-form-urlencoded"},
    ):
        response = alice.client.post("/v1/orders", content=body, headers=headers)
        assert (response.status_code, response.json()["code"]) == (415, "unsupported_media_type")
    response = admin.post(
        "/v1/admin/users/alice/credit",
        content=b'{"asset":"USDT"}',
        headers={"content-type": "text/plain"},
    )
    assert response.status_code == 415
    # The strict reading still accepts what it should.
    assert (
        alice.client.post(
            "/v1/orders", content=body, headers={"content-type": "application/json; charset=utf-8"}
        ).status_code
        == 202
    )
    assert admin.post("/v1/admin/users").status_code == 201  # the body is optional there
