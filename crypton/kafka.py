"""Kafka client settings shared by every producer and consumer of the exchange.

Plain ``confluent-kafka`` configuration: nothing here depends on one broker's
quirks, so the same code runs against the embedded brokers and Apache Kafka.
"""

from __future__ import annotations

from typing import Any

from crypton.config import Settings

__all__ = ["consumer_config", "producer_config"]

# The Java client's partitioner: ksqlDB, Kafka Streams and our own producers
# must all put one key in one partition, or a key's state would see two logs.
PARTITIONER = "murmur2_random"


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """A durable, ordered producer: acks from all replicas, idempotent, murmur2."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "partitioner": PARTITIONER,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "none",
    }
    config.update(overrides)
    return config


def consumer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """A consumer that reads only committed data and never commits offsets by itself:
    the exchange keeps its own offsets (Bytewax snapshots, API read model)."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": "crypton",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "session.timeout.ms": 6000,
    }
    config.update(overrides)
    return config
