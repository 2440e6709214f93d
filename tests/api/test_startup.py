"""The read model rebuilds from the log at every start, and the embedded brokers never
compact: start-up must stay fast on long topics. Measured here on N order records
(CRYPTON_STARTUP_RECORDS, default 200k) plus trades and balances."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from crypton import codec, topics
from crypton.config import Settings
from crypton.domain.messages import Balance, BalanceState
from crypton.kafka import producer_config

from .records import order_state, trade
from .support import start_api, wait_until_ready

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = int(os.environ.get("CRYPTON_STARTUP_RECORDS", "200000"))


def _produce(settings: Settings, n: int) -> None:
    producer = Producer(producer_config(settings, **{"linger.ms": 20}))
    orders = topics.topic_name(topics.ORDERS, settings.topic_prefix)
    trades = topics.topic_name(topics.TRADES, settings.topic_prefix)
    balances = topics.topic_name(topics.BALANCES, settings.topic_prefix)

    def send(topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value)
                producer.poll(0)
                return
            except BufferError:
                producer.poll(0.05)

    # Each order written as it moves OPEN -> FILLED, as the dataflow would: n records,
    # n/2 orders, 1000 users.
    for i in range(n // 2):
        user = f"user{i % 1000}"
        oid = f"order-{i}"
        for version, status in ((1, "OPEN"), (2, "FILLED")):
            record = order_state(oid, version=version, status=status, user=user, created=i)
            send(orders, oid, codec.encode(record))
        if i % 10 == 0:
            send(trades, "BTC-USDT", codec.encode(trade(i // 10 + 1, time=i * 100)))
            send(
                balances,
                user,
                codec.encode(
                    BalanceState(user_id=user, version=i + 1, balances={"BTC": Balance(i, 0)}, ts=i)
                ),
            )
    assert producer.flush(60) == 0


def test_startup_on_a_long_log(own_settings: Settings, tmp_path: Path) -> None:
    settings = own_settings
    start = time.monotonic()
    _produce(settings, RECORDS)
    produced = time.monotonic() - start
    server = start_api(settings, tmp_path / "logs", wait_ready=False)
    try:
        ready = wait_until_ready(server, timeout=120)
        with server.client() as client:
            detail = client.get("/ready").json()["detail"]
            metrics = client.get("/metrics").text
        print(
            f"\nread model: {RECORDS} order records (+{RECORDS // 20} trades, +{RECORDS // 20} "
            f"balances) produced in {produced:.1f}s; API ready {ready:.2f}s after launch "
            f"(read model {detail['startup_ms']} ms after its start)"
        )
        [read] = [
            float(line.rpartition(" ")[2])
            for line in metrics.splitlines()
            if line.startswith("crypton_api_readmodel_records_total{") and "orders" in line
        ]
        assert read == RECORDS
        assert ready < 60
    finally:
        server.stop()
