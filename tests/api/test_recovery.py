"""While the broker is down the API answers 503 with Retry-After; it recovers by itself."""

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


def test_503_with_retry_after_then_recovery_without_a_restart(
    tmp_path: Path, broker_kind: str
) -> None:
    settings = Settings(data_dir=tmp_path / "data", broker=broker_kind, kafka_port=free_ports(2))
    broker = EmbeddedBroker(settings, log_path=tmp_path / "broker.log").start().wait_ready(60)
    server = None
    try:
        ensure_topics(settings)
        server = start_api(settings, tmp_path / "logs", env={"CRYPTON_API_PRODUCE_TIMEOUT": "2"})
        with server.client(ADMIN_TOKEN) as admin:
            alice = create_user(admin, "alice")
            order = {
                "market": "BTC-USDT", "side": "buy", "type": "limit",
                "price": "100", "quantity": "1", "client_order_id": "before",
            }  # fmt: skip
            assert alice.client.post("/v1/orders", json=order).status_code == 202
            broker.stop(grace=5)
            retry = {**order, "client_order_id": "during"}
            response = alice.client.post("/v1/orders", json=retry)
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "1"
            assert response.json()["code"] == "unavailable"
            # The client retries as told, with the same id, while the broker comes back.
            broker.start().wait_ready(60)
            back = time.monotonic()
            deadline = back + 60
            while response.status_code == 503 and time.monotonic() < deadline:
                time.sleep(int(response.headers["Retry-After"]))
                response = alice.client.post("/v1/orders", json=retry)
            took = time.monotonic() - back
            print(f"API writes again {took:.1f}s after the broker answered")
            assert response.status_code == 202, response.text
            assert server.child.running  # the same process: nothing was restarted
    finally:
        if server is not None:
            server.stop()
        broker.stop(grace=2)
