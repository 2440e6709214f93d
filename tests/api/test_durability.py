"""A 202 means the command is in the log: with the broker gone the API answers 503."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from crypton.broker import EmbeddedBroker
from crypton.config import Settings
from crypton.process import free_ports
from crypton.topics import ensure_topics

from .support import ADMIN_TOKEN, create_user, start_api

pytestmark = pytest.mark.integration


def test_503_when_the_broker_is_down(tmp_path: Path, broker_kind: str) -> None:
    # A broker of our own: the session's is shared and must stay up.
    settings = Settings(data_dir=tmp_path / "data", broker=broker_kind, kafka_port=free_ports(2))
    broker = EmbeddedBroker(settings, log_path=tmp_path / "broker.log").start().wait_ready(30)
    server = None
    try:
        ensure_topics(settings)
        server = start_api(settings, tmp_path / "logs", env={"CRYPTON_API_PRODUCE_TIMEOUT": "3"})
        with server.client(ADMIN_TOKEN) as admin:
            alice = create_user(admin, "alice")
            order = {
                "market": "BTC-USDT",
                "side": "buy",
                "type": "limit",
                "price": "100",
                "quantity": "1",
                "client_order_id": "c1",
            }
            assert alice.client.post("/v1/orders", json=order).status_code == 202
            broker.stop(grace=5)
            start = time.monotonic()
            response = alice.client.post("/v1/orders", json={**order, "client_order_id": "c2"})
            took = time.monotonic() - start
            assert response.status_code == 503, response.text
            body = response.json()
            assert body["code"] == "unavailable" and "retry" in body["message"]
            assert took < 10, took  # bounded by the produce timeout, not hanging
            credit = admin.post(
                "/v1/admin/users/alice/credit",
                json={"asset": "BTC", "amount": "1", "transfer_id": "t1"},
            )
            assert credit.status_code == 503
            # Reads keep working from the read model; readiness reports the broker.
            assert alice.client.get("/v1/balances").status_code == 200
            time.sleep(2.5)
            assert admin.get("/ready").status_code == 503
            metrics = admin.get("/metrics").text
            assert 'crypton_api_produce_failures_total{command="place_order"} 1.0' in metrics
    finally:
        if server is not None:
            server.stop()
        broker.stop(grace=2)
