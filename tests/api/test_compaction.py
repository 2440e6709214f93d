"""Kafka compacts the state topics, and the API's read model rebuilds from what is left.

A real broker with small state segments: many versions of one balance and of a few
orders are written, the cleaner drops the superseded ones, and an API started after
that serves exactly the latest versions.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from crypton import topics
from crypton.broker import EmbeddedBroker
from crypton.config import Settings
from crypton.domain.messages import Balance, BalanceState
from crypton.kafka import consumer_config
from crypton.topics import ensure_topics, partition_for

from .records import order_state
from .support import ADMIN_TOKEN, StateWriter, create_user, start_api, wait_for

pytestmark = pytest.mark.integration

VERSIONS = 400
ORDERS = 20


def _records_in(settings: Settings, logical: str, key: str) -> int:
    """How many records the partition of ``key`` still holds (compaction removes some)."""
    topic = topics.topic_name(logical, settings.topic_prefix)
    partition = partition_for(key.encode(), settings.partitions)
    consumer = Consumer(consumer_config(settings, **{"group.id": f"t-{uuid.uuid4().hex}"}))
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        count, last = 0, -1
        deadline = time.monotonic() + 20
        while last < high - 1 and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error() is None:
                    count += 1
                    last = message.offset()
        return count
    finally:
        consumer.close()


def _write_versions(writer: StateWriter, user: str, first: int, last: int) -> None:
    for version in range(first, last + 1):
        balances = {"BTC": Balance(version, 0), "USDT": Balance(10 * version, version)}
        record = BalanceState(user_id=user, version=version, balances=balances, ts=version)
        writer.send(topics.BALANCES, user, record)
        for i in range(ORDERS):
            oid = f"{user}-o{i}"
            status = "FILLED" if version == last else "PARTIALLY_FILLED"
            writer.send(
                topics.ORDERS,
                oid,
                order_state(oid, version=version, status=status, user=user, created=1),
            )
    writer.flush()


def test_read_model_rebuilds_from_a_compacted_topic(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    if own_broker.kind != "kafka":
        pytest.skip("tansu does not compact")
    settings = dataclasses.replace(
        own_broker.settings,
        data_dir=tmp_path / "crypton",
        topic_prefix="compact.",
        state_segment_ms=300,  # segments roll (and become compactable) within a second
    )
    ensure_topics(settings)
    server = start_api(settings, tmp_path / "logs")
    try:
        with server.client(ADMIN_TOKEN) as admin:
            user = create_user(admin, "carol")
        writer = StateWriter(settings)
        _write_versions(writer, "carol", 1, VERSIONS - 1)
        time.sleep(1.0)
        # A record after segment.ms closes the segment holding the others.
        _write_versions(writer, "carol", VERSIONS, VERSIONS)
        written = VERSIONS

        def compacted() -> bool:
            return _records_in(settings, topics.BALANCES, "carol") < written // 2

        wait_for(compacted, timeout=90, interval=2.0)
        assert _records_in(settings, topics.ORDERS, "carol-o0") < written
    finally:
        server.stop()

    restarted = start_api(settings, tmp_path / "logs2")
    try:
        balances = user.client.get(f"{restarted.url}/v1/balances").json()
        assert Decimal(balances["BTC"]["available"]) == Decimal(VERSIONS) / 10**8
        assert Decimal(balances["USDT"]["available"]) == Decimal(10 * VERSIONS) / 10**6
        assert Decimal(balances["USDT"]["held"]) == Decimal(VERSIONS) / 10**6
        orders = user.client.get(f"{restarted.url}/v1/orders", params={"status": "all"}).json()
        assert len(orders["items"]) == ORDERS
        assert {o["status"] for o in orders["items"]} == {"FILLED"}
    finally:
        restarted.stop()
