"""What a hostile but legitimate tester found in the API (issue 11), one test per finding.
Real broker, real uvicorn on loopback; every loop is bounded."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from crypton import topics
from crypton.config import Settings
from crypton.domain.messages import CancelAll

from .records import order_state
from .support import ApiUser, StateWriter, read_wallet_inbox, wait_for

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
