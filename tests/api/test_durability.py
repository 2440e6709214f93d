"""A 202 means the command is in the log: with the broker gone the API answers 503 with
Retry-After, and it writes again by itself once the broker is back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from crypton.broker import EmbeddedBroker
from crypton.config import Settings
from crypton.process import free_ports
from crypton.topics import ensure_topics

from .support import ADMIN_TOKEN, ApiServer, ApiUser, create_user, start_api

pytestmark = pytest.mark.integration

ORDER = {
    "market": "BTC-USDT", "side": "buy", "type": "limit",
    "price": "100", "quantity": "1", "client_order_id": "c1",
}  # fmt: skip


@contextmanager
def _api_on_own_broker(
    tmp_path: Path, broker_kind: str, produce_timeout: str
) -> Iterator[tuple[EmbeddedBroker, ApiServer, httpx.Client, ApiUser]]:
    """A broker of the test's own (the session's is shared and must stay up), the API on
    it, and alice with one order written: ``(broker, server, admin client, alice)``."""
    settings = Settings(data_dir=tmp_path / "data", broker=broker_kind, kafka_port=free_ports(2))
    broker = EmbeddedBroker(settings, log_path=tmp_path / "broker.log").start().wait_ready(60)
    server = None
    try:
        ensure_topics(settings)
        server = start_api(
            settings, tmp_path / "logs", env={"CRYPTON_API_PRODUCE_TIMEOUT": produce_timeout}
        )
        with server.client(ADMIN_TOKEN) as admin:
            alice = create_user(admin, "alice")
            assert alice.client.post("/v1/orders", json=ORDER).status_code == 202
            yield broker, server, admin, alice
    finally:
        if server is not None:
            server.stop()
        broker.stop(grace=2)


def test_503_when_the_broker_is_down(tmp_path: Path, broker_kind: str) -> None:
    with _api_on_own_broker(tmp_path, broker_kind, "3") as (broker, _, admin, alice):
        broker.stop(grace=5)
        start = time.monotonic()
        response = alice.client.post("/v1/orders", json={**ORDER, "client_order_id": "c2"})
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


def test_503_with_retry_after_then_recovery_without_a_restart(
    tmp_path: Path, broker_kind: str
) -> None:
    with _api_on_own_broker(tmp_path, broker_kind, "2") as (broker, server, _, alice):
        broker.stop(grace=5)
        retry = {**ORDER, "client_order_id": "during"}
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
