"""Topic names and provisioning: idempotent, compacted where declared, prefixed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import ConfigResource

from crypton.config import Settings
from crypton.kafka import admin, producer_config
from crypton.process import settings_env
from crypton.topics import (
    TOPICS,
    TopicError,
    ensure_topics,
    murmur2,
    partition_for,
    topic_name,
    topic_names,
)


def test_names_carry_the_prefix() -> None:
    assert topic_name("orders") == "crypton.orders"
    assert topic_name("orders", "dev.") == "dev.crypton.orders"
    assert topic_names("x.")[0] == "x.crypton.wallet.inbox"
    assert len(set(topic_names())) == len(TOPICS)


def test_state_topics_are_compacted_and_histories_are_not() -> None:
    policies = {spec.logical: spec.config()["cleanup.policy"] for spec in TOPICS}
    assert policies["orders"] == policies["balances"] == policies["depth"] == "compact"
    assert policies["wallet.inbox"] == policies["trades"] == "delete"


@pytest.mark.parametrize(
    ("key", "expected"),
    [  # the vectors of Kafka's own UtilsTest.testMurmur2
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ("abc", 479470107),
    ],
)
def test_murmur2_matches_the_java_client(key: str, expected: int) -> None:
    assert murmur2(key.encode()) == expected


def _fresh(kafka: Settings, partitions: int = 4) -> Settings:
    return dataclasses.replace(
        kafka, topic_prefix=f"p{uuid.uuid4().hex[:8]}.", partitions=partitions
    )


@pytest.mark.integration
def test_ensure_topics_is_idempotent(kafka: Settings) -> None:
    settings = _fresh(kafka, partitions=3)
    assert ensure_topics(settings) == topic_names(settings.topic_prefix)
    assert ensure_topics(settings) == []
    topics = admin(settings).list_topics(timeout=10).topics
    for name in topic_names(settings.topic_prefix):
        assert len(topics[name].partitions) == 3


@pytest.mark.integration
def test_compacted_topics_are_created_compacted(kafka: Settings) -> None:
    settings = _fresh(kafka)
    ensure_topics(settings)
    resources = [ConfigResource("topic", spec.name(settings.topic_prefix)) for spec in TOPICS]
    client = admin(settings)  # kept: futures fail once their client is collected
    described = client.describe_configs(resources)
    policy = {
        resource.name: future.result(10)["cleanup.policy"].value
        for resource, future in described.items()
    }
    for spec in TOPICS:
        expected = "compact" if spec.compacted else "delete"
        assert policy[spec.name(settings.topic_prefix)] == expected, spec.logical


@pytest.mark.integration
def test_a_different_partition_count_is_an_error(kafka: Settings) -> None:
    settings = _fresh(kafka, partitions=4)
    ensure_topics(settings)
    with pytest.raises(TopicError, match="do not have CRYPTON_PARTITIONS=2 partitions"):
        ensure_topics(dataclasses.replace(settings, partitions=2))


def _crypton(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crypton.cli", *args],
        env={**settings_env(settings), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.integration
def test_cli_topics_says_what_it_did(kafka: Settings) -> None:
    settings = _fresh(kafka)
    first = _crypton(settings, "topics")
    assert first.returncode == 0, first.stderr
    assert f"{len(TOPICS)} topics present, {len(TOPICS)} created" in first.stdout
    second = _crypton(settings, "topics")
    assert second.returncode == 0, second.stderr
    assert f"{len(TOPICS)} topics present, 0 created" in second.stdout
    mismatch = _crypton(settings, "topics", CRYPTON_PARTITIONS="2")
    assert mismatch.returncode == 2
    assert mismatch.stderr.count("\n") == 1
    assert mismatch.stderr.startswith("crypton: error: existing topics do not have")


@pytest.mark.integration
def test_the_producer_puts_each_key_where_partition_for_says(kafka: Settings) -> None:
    settings = _fresh(kafka, partitions=5)
    ensure_topics(settings)
    topic = topic_name("wallet.inbox", settings.topic_prefix)
    landed: dict[bytes, int] = {}
    producer = Producer(producer_config(settings))
    for i in range(100):
        key = f"user-{i}".encode()
        producer.produce(
            topic,
            b"{}",
            key,
            on_delivery=lambda err, msg: landed.update({msg.key(): msg.partition()}),
        )
    assert producer.flush(10) == 0
    assert len(landed) == 100
    assert len(set(landed.values())) == 5
    assert all(partition == partition_for(key, 5) for key, partition in landed.items())
